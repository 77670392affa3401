//! The guest side: serial output, hypercalls, raw memory access and the entry point.
//!
//! Guests start in 64-bit long mode at CPL 0 with paging on: the hypervisor builds
//! identity page tables (2 MiB pages) over the first 4 GiB of guest-physical memory,
//! so a guest pointer is its guest-physical address. The stack pointer starts at
//! [`STACK_TOP`], just below the image; interrupts stay disabled.
//!
//! This is the only module of the crate with `unsafe` code: port I/O, `vmmcall` and
//! accesses to arbitrary guest-physical addresses need it.

use core::fmt;

use crate::abi::{access, hypercall as nr};

/// Where the hypervisor points RSP at entry (grows down; the image starts here).
pub const STACK_TOP: u64 = 0x10_0000;
/// The COM1 data port; the hypervisor forwards bytes written here to its console.
pub const SERIAL_PORT: u16 = 0x3f8;

/// Writes one byte to the serial port (intercepted by the hypervisor).
pub fn serial_byte(byte: u8) {
    // SAFETY: an `out` to the serial port has no memory effects in the guest; the
    // hypervisor intercepts every port access.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") SERIAL_PORT, in("al") byte,
            options(nomem, nostack, preserves_flags))
    };
}

/// Writes `value` to I/O port `port` (every port is intercepted by the hypervisor).
pub fn port_write(port: u16, value: u8) {
    // SAFETY: a port write has no effect on guest memory; the hypervisor intercepts it.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags))
    };
}

/// Executes `ud2`: without an IDT this escalates to a triple fault.
pub fn invalid_opcode() {
    // SAFETY: only raises #UD in this guest.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
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

/// Issues hypercall `number` with up to three arguments; returns RAX.
pub fn hypercall(number: u64, a0: u64, a1: u64, a2: u64) -> i64 {
    let ret: u64;
    // SAFETY: `vmmcall` traps to the hypervisor, which only changes RAX (the result)
    // and may read or write guest memory through its own mappings (hence no `nomem`).
    unsafe {
        core::arch::asm!("vmmcall", inlateout("rax") number => ret,
            in("rdi") a0, in("rsi") a1, in("rdx") a2, options(nostack))
    };
    ret as i64
}

/// Ends this guest with `code` (0: every check passed).
pub fn exit(code: u64) -> ! {
    hypercall(nr::EXIT, code, 0, 0);
    // The hypervisor never resumes a guest after EXIT; if it did, stop here.
    loop {
        // SAFETY: `hlt` with interrupts off only stops this vCPU (the hypervisor
        // intercepts it).
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
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

/// Clones this guest copy-on-write: the child id (> 0) in the parent, 0 in the child,
/// a negative status on failure.
pub fn clone_guest() -> i64 {
    hypercall(nr::CLONE, 0, 0, 0)
}

/// Lets the other guests run.
pub fn yield_now() {
    hypercall(nr::YIELD, 0, 0, 0);
}

/// The u64 at `gpa` as the hypervisor sees it through this guest's stage-2 mapping.
pub fn host_read(gpa: u64) -> i64 {
    hypercall(nr::HOST_READ, gpa, 0, 0)
}

/// Reads the u64 at guest-physical address `gpa`.
pub fn read_u64(gpa: u64) -> u64 {
    // SAFETY: guest pointers are identity-mapped GPAs; the access either succeeds or
    // traps to the hypervisor (which ends this guest or maps the page), so it cannot
    // corrupt anything but this guest's own memory, which the test owns.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

/// Writes the u64 `value` at guest-physical address `gpa`.
pub fn write_u64(gpa: u64, value: u64) {
    // SAFETY: as in `read_u64`: the scenario owns the GPAs it writes, which lie outside
    // its image and stack.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, value) };
}

/// Calls the code at guest-physical address `gpa` (used to test execute rights).
pub fn call_at(gpa: u64) {
    // SAFETY: the scenario wrote a `ret` at `gpa` first (or expects a stage-2 fault that
    // ends the guest before anything runs there).
    unsafe { core::arch::asm!("call {0}", in(reg) gpa, clobber_abi("C")) };
}

/// Prints `panic: <message>` and ends the guest with exit code 2.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("panic: {}", info);
    exit(2)
}

/// Defines the image header, `_start`, the panic handler and the bare-metal runtime of
/// a guest whose body is `$main: fn()`; returning from `$main` ends the guest with 0.
#[macro_export]
macro_rules! guest_main {
    ($main:path) => {
        $crate::bare_metal_runtime!();

        core::arch::global_asm!(
            ".pushsection .s2header, \"a\"",
            ".ascii \"S2GUEST\\0\"",
            ".long 1",
            ".long 64",
            ".quad __image_start",
            ".quad _start",
            ".quad __image_size",
            ".long 0",
            ".long 0",
            ".quad 0",
            ".quad 0",
            ".popsection",
            ".pushsection .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "call {entry}",
            "ud2",
            ".popsection",
            entry = sym guest_entry,
        );

        extern "C" fn guest_entry() -> ! {
            $main();
            $crate::rt::exit(0)
        }

        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::panic(info)
        }
    };
}
