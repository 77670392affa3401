//! The runtime symbols every bare-metal binary of the project needs on stable Rust: the
//! C memory functions that the prebuilt `compiler_builtins` lacks, and the unwinding
//! symbols the prebuilt `core` and `alloc` refer to.
//!
//! One copy serves both the hypervisor kernel (`hv`) and the guest images (through
//! `guest-rt`); each links this crate with `use baremetal as _`. The symbols are exported under their C names only
//! in the bare-metal build (`--cfg hv_kernel`, set by `cargo xtask build` for the kernel
//! and the guests alike): a host build that links this library keeps its C library's
//! versions, and sees these as ordinary functions (which the unit tests below exercise).
//!
//! The functions use `rep movsb`/`rep stosb`/`repe cmpsb` in inline assembly, never Rust
//! loops that LLVM could turn back into calls to themselves. They rely on the direction
//! flag being clear on entry, as the System V ABI guarantees (AMD APM vol. 3, "MOVS",
//! "STOS", "CMPS"; Intel SDM vol. 2B, "REP/REPE/REPZ/REPNE/REPNZ").
#![cfg_attr(not(test), no_std)]

/// Copies `n` bytes from `src` to `dst` (the regions must not overlap).
///
/// # Safety
/// `src` must be readable and `dst` writable for `n` bytes, and the regions must not
/// overlap.
#[cfg_attr(hv_kernel, unsafe(no_mangle))]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both regions are valid for `n` bytes; the direction
    // flag is clear per the System V ABI, so `rep movsb` copies forward.
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
#[cfg_attr(hv_kernel, unsafe(no_mangle))]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dst is below src or the regions are
        // disjoint; the caller guarantees both regions are valid for `n` bytes.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: dst overlaps the tail of src (so n > 0): copy backwards from the last
        // byte of each region, with the direction flag set for the copy only (it is
        // cleared again before returning, as the ABI requires).
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
#[cfg_attr(hv_kernel, unsafe(no_mangle))]
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
#[cfg_attr(hv_kernel, unsafe(no_mangle))]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let result: i32;
    // SAFETY: the caller guarantees both regions are readable for `n` bytes; `repe
    // cmpsb` reads at most `n` bytes of each, and on a mismatch both pointers sit one
    // past the differing bytes.
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
#[cfg_attr(hv_kernel, unsafe(no_mangle))]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`, forwarded from the caller.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the prebuilt `core`; never called with `panic = "abort"`.
#[cfg(hv_kernel)]
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by landing pads in the prebuilt `alloc`; unreachable because panics never
/// unwind here (every panic handler of the project ends the run or the guest).
#[cfg(hv_kernel)]
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn memcpy_copies_exactly_n_bytes() {
        for n in [0, 1, 7, 64, 4097] {
            let src = pattern(n);
            let mut dst = vec![0xEEu8; n + 2];
            // SAFETY: `src` holds n bytes, `dst` n + 2; distinct vectors do not overlap.
            let ret = unsafe { memcpy(dst.as_mut_ptr().wrapping_add(1), src.as_ptr(), n) };
            assert_eq!(ret, dst.as_mut_ptr().wrapping_add(1));
            assert_eq!(&dst[1..=n], &src[..]);
            assert_eq!((dst[0], dst[n + 1]), (0xEE, 0xEE), "n = {n}");
        }
    }

    #[test]
    fn memmove_handles_both_overlap_directions() {
        for (from, to, n) in [(0, 5, 20), (5, 0, 20), (3, 3, 10), (0, 1, 1), (2, 9, 0)] {
            let mut buf = pattern(32);
            let mut expected = buf.clone();
            expected.copy_within(from..from + n, to);
            let base = buf.as_mut_ptr();
            // SAFETY: both ranges lie inside the 32-byte buffer.
            unsafe { memmove(base.wrapping_add(to), base.wrapping_add(from), n) };
            assert_eq!(buf, expected, "from {from} to {to}, {n} bytes");
        }
    }

    #[test]
    fn memset_fills_low_byte_only_within_range() {
        let mut buf = vec![1u8; 16];
        // SAFETY: bytes 2..12 lie inside the buffer.
        unsafe { memset(buf.as_mut_ptr().wrapping_add(2), 0x1AB, 10) };
        assert_eq!(&buf[..2], &[1, 1]);
        assert!(buf[2..12].iter().all(|&b| b == 0xAB));
        assert!(buf[12..].iter().all(|&b| b == 1));
    }

    #[test]
    fn memcmp_orders_like_c_and_bcmp_agrees_on_equality() {
        let a = *b"abcdef";
        for (b, sign) in [(*b"abcdef", 0), (*b"abcdeg", -1), (*b"abbzzz", 1)] {
            // SAFETY: both arrays hold 6 bytes.
            let c = unsafe { memcmp(a.as_ptr(), b.as_ptr(), 6) };
            // SAFETY: as above.
            let e = unsafe { bcmp(a.as_ptr(), b.as_ptr(), 6) };
            assert_eq!(c.signum(), sign, "{b:?}");
            assert_eq!(e == 0, sign == 0);
        }
        // The difference of the first differing bytes, as unsigned values.
        // SAFETY: one byte each.
        let high_first = unsafe { memcmp([0xFFu8].as_ptr(), [0x01u8].as_ptr(), 1) };
        assert_eq!(high_first, 0xFE);
        // SAFETY: zero bytes are read.
        let empty = unsafe { memcmp(a.as_ptr(), b"zzzzzz".as_ptr(), 0) };
        assert_eq!(empty, 0);
    }
}
