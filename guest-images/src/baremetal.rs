//! Support every bare-metal binary of the project needs on stable Rust (the guests and
//! the hypervisor kernel): the C memory functions that the prebuilt `compiler_builtins`
//! lacks, and the unwinding symbols the prebuilt `core` and `alloc` refer to.
//!
//! [`bare_metal_runtime!`](crate::bare_metal_runtime) expands to those definitions in the
//! calling binary crate, so that only binaries (never host builds that link this library)
//! get them.

/// Defines `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`, `rust_eh_personality`
/// and `_Unwind_Resume`
/// in the calling crate (a `no_std`, `no_main` binary).
///
/// The copies use `rep movsb`/`rep stosb`/`repe cmpsb` in inline assembly, never Rust
/// loops that LLVM could turn back into calls to themselves.
#[macro_export]
macro_rules! bare_metal_runtime {
    () => {
        /// Copies `n` bytes from `src` to `dst` (the regions must not overlap).
        ///
        /// # Safety
        /// `src` must be readable and `dst` writable for `n` bytes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
            // SAFETY: the caller guarantees both regions are valid for `n` bytes; the
            // direction flag is clear per the System V ABI, so `rep movsb` copies forward.
            unsafe {
                core::arch::asm!(
                    "rep movsb",
                    inout("rcx") n => _,
                    inout("rdi") dst => _,
                    inout("rsi") src => _,
                    options(nostack, preserves_flags)
                )
            };
            dst
        }

        /// Copies `n` bytes from `src` to `dst`; the regions may overlap.
        ///
        /// # Safety
        /// `src` must be readable and `dst` writable for `n` bytes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
            if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
                // SAFETY: forward copy is correct when dst is below src or disjoint; the
                // caller guarantees validity of both regions.
                unsafe { memcpy(dst, src, n) }
            } else {
                // SAFETY: dst overlaps the tail of src: copy backwards (direction flag set
                // for the copy and cleared again), from the last byte of each region.
                unsafe {
                    core::arch::asm!(
                        "std",
                        "rep movsb",
                        "cld",
                        inout("rcx") n => _,
                        inout("rdi") dst.wrapping_add(n - 1) => _,
                        inout("rsi") src.wrapping_add(n - 1) => _,
                        options(nostack)
                    )
                };
                dst
            }
        }

        /// Fills `n` bytes at `dst` with the low byte of `value`.
        ///
        /// # Safety
        /// `dst` must be writable for `n` bytes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
            // SAFETY: the caller guarantees `dst` is writable for `n` bytes.
            unsafe {
                core::arch::asm!(
                    "rep stosb",
                    inout("rcx") n => _,
                    inout("rdi") dst => _,
                    in("al") value as u8,
                    options(nostack, preserves_flags)
                )
            };
            dst
        }

        /// Compares `n` bytes: negative, zero or positive like C's `memcmp`.
        ///
        /// # Safety
        /// Both regions must be readable for `n` bytes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            let result: i32;
            // SAFETY: the caller guarantees both regions are readable for `n` bytes;
            // `repe cmpsb` reads at most `n` bytes of each, and on a mismatch both
            // pointers sit one past the differing bytes.
            unsafe {
                core::arch::asm!(
                    "xor eax, eax",
                    "test rcx, rcx",
                    "jz 2f",
                    "repe cmpsb",
                    "je 2f",
                    "movzx eax, byte ptr [rsi - 1]",
                    "movzx edx, byte ptr [rdi - 1]",
                    "sub eax, edx",
                    "2:",
                    inout("rcx") n => _,
                    inout("rsi") a => _,
                    inout("rdi") b => _,
                    out("eax") result,
                    out("edx") _,
                    options(nostack, readonly)
                )
            };
            result
        }

        /// Compares `n` bytes for equality (zero when equal).
        ///
        /// # Safety
        /// Both regions must be readable for `n` bytes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: same contract as `memcmp`, forwarded from the caller.
            unsafe { memcmp(a, b, n) }
        }

        /// Referenced by the prebuilt `core`; never called with `panic = "abort"`.
        #[unsafe(no_mangle)]
        pub extern "C" fn rust_eh_personality() {}

        /// Referenced by landing pads in the prebuilt `alloc`; unreachable because
        /// panics never unwind here (the panic handler does not return).
        #[unsafe(no_mangle)]
        pub extern "C" fn _Unwind_Resume() -> ! {
            loop {
                core::hint::spin_loop();
            }
        }
    };
}
