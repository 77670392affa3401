//! The guest side: serial output, hypercalls, raw memory access and the entry point.
//!
//! Guests start in 64-bit long mode at CPL 0 with paging on: the hypervisor builds
//! identity page tables (2 MiB pages) over the first 4 GiB of guest-physical memory,
//! so a guest pointer is its guest-physical address. The stack pointer starts at
//! [`STACK_TOP`], just below the image; interrupts stay disabled.
//!
//! The hardware primitives (port I/O, hypercalls, `hlt`, `ud2`, raw guest-physical
//! accesses, calls into a GPA) are safe functions of [`guest_rt`], re-exported here;
//! this crate adds what guests build on them, without `unsafe`.

use core::fmt;

pub use guest_rt::cpu;
pub use guest_rt::{
    NoHeap, call_at, hypercall, invalid_opcode, port_write, read_u64, reset_scribbled,
    snapshot_point, write_u64, yield_keeps_registers,
};
pub use hv_abi::STACK_TOP;

use crate::abi::{access, hypercall as nr};

/// The COM1 data port; the hypervisor forwards bytes written here to its console.
pub const SERIAL_PORT: u16 = 0x3f8;

/// Writes one byte to the serial port (intercepted by the hypervisor).
pub fn serial_byte(byte: u8) {
    port_write(SERIAL_PORT, byte);
}

/// The serial console as a [`fmt::Write`] sink.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(serial_byte);
        Ok(())
    }
}

/// Prints to the serial console (no newline).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::rt::Serial, format_args!($($arg)*));
    }};
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::rt::serial_byte(b'\n');
    }};
}

/// Ends the guest with exit code 1 after printing `FAIL: <message>` when the
/// condition is false.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {{
        if !$cond {
            $crate::print!("FAIL: ");
            $crate::println!($($arg)*);
            $crate::rt::exit(1);
        }
    }};
}

/// Ends this guest with `code` (0: every check passed).
pub fn exit(code: u64) -> ! {
    hypercall(nr::EXIT, code, 0, 0);
    // The hypervisor never resumes a guest after EXIT; if it did, stop here.
    loop {
        guest_rt::halt();
    }
}

/// Size of the stage-2 leaf that maps `gpa` (0 when not mapped).
pub fn leaf_size(gpa: u64) -> u64 {
    hypercall(nr::LEAF_SIZE, gpa, 0, 0) as u64
}

/// Asks the hypervisor to give `[gpa, gpa+size)` the rights `rights` (see
/// [`access`]); returns 0 or a negative status.
pub fn protect(gpa: u64, size: u64, rights: u64) -> i64 {
    hypercall(
        nr::PROTECT,
        gpa,
        size,
        rights & (access::READ | access::WRITE | access::EXECUTE),
    )
}

/// Asks the hypervisor to unmap `[gpa, gpa+size)`; returns 0 or a negative status.
pub fn unmap(gpa: u64, size: u64) -> i64 {
    hypercall(nr::UNMAP, gpa, size, 0)
}

/// Cuts `[gpa, gpa + size)` into 4 KiB areas: of every other page, one in two is
/// made read-only, the other unmapped. Stops at the first refusal; returns the number
/// of calls that succeeded and that refusal's status (0 if none).
pub fn cut_every_other_page(gpa: u64, size: u64) -> (u64, i64) {
    let mut done = 0;
    for (i, page) in (gpa..gpa + size).step_by(2 * 4096).enumerate() {
        let status = if i % 2 == 0 {
            protect(page, 4096, access::READ)
        } else {
            unmap(page, 4096)
        };
        if status != 0 {
            return (done, status);
        }
        done += 1;
    }
    (done, 0)
}

/// Clones this guest copy-on-write: the child id (> 0) in the parent, 0 in the child,
/// a negative status on failure.
pub fn clone_guest() -> i64 {
    hypercall(nr::CLONE, 0, 0, 0)
}

/// Lets the other guests run.
pub fn yield_now() {
    hypercall(nr::YIELD, 0, 0, 0);
}

/// Gives the frames of `[gpa, gpa+size)` back to the hypervisor (the range stays
/// on-demand RAM); returns the frames given back or a negative status.
pub fn balloon(gpa: u64, size: u64) -> i64 {
    hypercall(nr::BALLOON, gpa, size, 0)
}

/// The u64 at `gpa` as the hypervisor sees it through this guest's stage-2 mapping.
pub fn host_read(gpa: u64) -> i64 {
    hypercall(nr::HOST_READ, gpa, 0, 0)
}

/// Prints `panic: <message>` and ends the guest with exit code 2.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("panic: {}", info);
    exit(2)
}

/// Assembly: the 64-byte image header ([`crate::abi::ImageHeader`], layout there) with
/// the flags word `$flags` (an assembly expression), at the current location; the
/// checksum stays 0 until `cargo xtask build` seals the image. Part of [`guest_main!`]
/// and [`real_mode_guest!`]; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! image_header_fields {
    ($flags:literal) => {
        concat!(
            ".ascii \"S2GUEST\\0\"\n",
            ".long 1\n",
            ".long 64\n",
            ".quad __image_start\n",
            ".quad _start\n",
            ".quad __image_size\n",
            ".long 0\n",
            ".long ",
            $flags,
            "\n",
            ".quad 0\n",
            ".quad 0",
        )
    };
}

/// The items every guest binary of the bare-metal build needs besides its code: the
/// allocator (none: guests have no heap) and the panic handler ([`panic`]). Part of
/// [`guest_main!`] and [`real_mode_guest!`]; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! guest_runtime_items {
    () => {
        #[cfg(hv_kernel)]
        #[global_allocator]
        static NO_HEAP: $crate::rt::NoHeap = $crate::rt::NoHeap;

        #[cfg(hv_kernel)]
        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::panic(info)
        }
    };
}

/// Defines the image header, `_start`, the allocator and the panic handler of a guest
/// whose body is `$scenario: fn()`; returning from `$scenario` ends the guest with 0.
/// The C runtime symbols come from the `baremetal` crate (through `guest-rt`).
///
/// All of that only in the bare-metal build (`--cfg hv_kernel`, set by `cargo xtask
/// build`); a host build (a workspace-wide `cargo clippy` or `cargo build`, where
/// feature unification may bring `std` into the dependencies) gets an ordinary `main`
/// that explains how guests are run, as the hypervisor kernel does.
#[macro_export]
macro_rules! guest_main {
    ($scenario:path) => {
        #[cfg(hv_kernel)]
        core::arch::global_asm!(
            ".pushsection .s2header, \"a\"",
            $crate::image_header_fields!("0"),
            ".popsection",
            ".pushsection .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "call {entry}",
            "ud2",
            ".popsection",
            entry = sym guest_entry,
        );

        #[cfg(hv_kernel)]
        extern "C" fn guest_entry() -> ! {
            $scenario();
            $crate::rt::exit(0)
        }

        $crate::guest_runtime_items!();

        #[cfg(not(hv_kernel))]
        fn main() {
            let _bare_metal_only: fn() = $scenario;
            eprintln!("guest images run under the hypervisor: `cargo xtask build|run`");
            std::process::exit(2);
        }
    };
}

/// Defines a guest that runs in 16-bit real mode: the image header with
/// [`IMAGE_FLAG_REAL_MODE`](crate::abi::IMAGE_FLAG_REAL_MODE), `_start` followed by the
/// given AT&T-syntax `.code16` assembly lines, and two routines the body may call or
/// jump to:
///
/// * `real_mode_print`: `call` it with DS:SI at a NUL-terminated string to write the
///   string to COM1 (`OUT DX, AL`, intercepted by the hypervisor);
/// * `real_mode_exit`: jump to it with the exit code in EDI; it issues the EXIT
///   hypercall (RAX = 0) with `VMCALL` on Intel or `VMMCALL` on AMD, chosen by the
///   CPUID vendor string (Intel SDM vol. 2B "VMCALL"; AMD APM vol. 3 "VMMCALL").
///
/// The header and the code share one section starting at `real_mode_image_start`, so
/// `$(label - real_mode_image_start)` is a label's offset from CS:0000 (the hypervisor
/// sets CS = DS = ES = load address / 16). Link with `realmode.ld` (`build.rs`).
#[macro_export]
macro_rules! real_mode_guest {
    ($($line:literal),* $(,)?) => {
        #[cfg(hv_kernel)]
        core::arch::global_asm!(
            ".pushsection .s2header, \"ax\"",
            "real_mode_image_start:",
            $crate::image_header_fields!("{flags}"),
            ".code16",
            ".global _start",
            "_start:",
            $($line,)*
            "real_mode_exit:",
            "xorl %eax, %eax",
            "cpuid",
            "cmpl ${intel_ebx}, %ebx",
            "movl ${exit_nr}, %eax",
            "je 1f",
            "vmmcall",
            "jmp 2f",
            "1:",
            "vmcall",
            "2:",
            "hlt",
            "jmp 2b",
            "real_mode_print:",
            "pushw %ax",
            "pushw %dx",
            "movw ${serial}, %dx",
            "1:",
            "lodsb",
            "testb %al, %al",
            "jz 2f",
            "outb %al, %dx",
            "jmp 1b",
            "2:",
            "popw %dx",
            "popw %ax",
            "ret",
            ".code64",
            ".popsection",
            flags = const $crate::abi::IMAGE_FLAG_REAL_MODE,
            // "Genu" of "GenuineIntel" (CPUID leaf 0 EBX, Intel SDM vol. 2A "CPUID").
            intel_ebx = const 0x756E_6547u32,
            exit_nr = const $crate::abi::hypercall::EXIT,
            serial = const $crate::rt::SERIAL_PORT,
            options(att_syntax),
        );

        $crate::guest_runtime_items!();

        #[cfg(not(hv_kernel))]
        fn main() {
            eprintln!("guest images run under the hypervisor: `cargo xtask build|run`");
            std::process::exit(2);
        }
    };
}
