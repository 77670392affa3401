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

/// Fills every general-purpose register but RAX/RSP and every XMM register with
/// values derived from `seed`, yields to the other guests (whose own values pass
/// through the same CPU), and returns how many registers (or XMM halves) differ
/// afterwards: 0 when the hypervisor saves and restores the whole register state.
pub fn yield_keeps_registers(seed: u64) -> u64 {
    let errors: u64;
    // SAFETY: the block saves and restores RBX and RBP itself, declares every other
    // register it changes as clobbered, and leaves RSP as it found it; `vmmcall` with
    // RAX = YIELD only lets other guests run.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "push rax",
            "push 0",
            "mov rbx, [rsp + 8]", "xor rbx, 0x3",
            "mov rbp, [rsp + 8]", "xor rbp, 0x5",
            "mov rcx, [rsp + 8]", "xor rcx, 0x1",
            "mov rdx, [rsp + 8]", "xor rdx, 0x2",
            "mov rsi, [rsp + 8]", "xor rsi, 0x6",
            "mov rdi, [rsp + 8]", "xor rdi, 0x7",
            "mov r8, [rsp + 8]", "xor r8, 0x8",
            "mov r9, [rsp + 8]", "xor r9, 0x9",
            "mov r10, [rsp + 8]", "xor r10, 0xa",
            "mov r11, [rsp + 8]", "xor r11, 0xb",
            "mov r12, [rsp + 8]", "xor r12, 0xc",
            "mov r13, [rsp + 8]", "xor r13, 0xd",
            "mov r14, [rsp + 8]", "xor r14, 0xe",
            "mov r15, [rsp + 8]", "xor r15, 0xf",
            "movq xmm0, r8", "punpcklqdq xmm0, xmm0",
            "movq xmm1, r9", "punpcklqdq xmm1, xmm1",
            "movq xmm2, r10", "punpcklqdq xmm2, xmm2",
            "movq xmm3, r11", "punpcklqdq xmm3, xmm3",
            "movq xmm4, r12", "punpcklqdq xmm4, xmm4",
            "movq xmm5, r13", "punpcklqdq xmm5, xmm5",
            "movq xmm6, r14", "punpcklqdq xmm6, xmm6",
            "movq xmm7, r15", "punpcklqdq xmm7, xmm7",
            "movq xmm8, rbx", "punpcklqdq xmm8, xmm8",
            "movq xmm9, rbp", "punpcklqdq xmm9, xmm9",
            "movq xmm10, rcx", "punpcklqdq xmm10, xmm10",
            "movq xmm11, rdx", "punpcklqdq xmm11, xmm11",
            "movq xmm12, rsi", "punpcklqdq xmm12, xmm12",
            "movq xmm13, rdi", "punpcklqdq xmm13, xmm13",
            "movq xmm14, r8", "punpcklqdq xmm14, xmm14",
            "movq xmm15, r9", "punpcklqdq xmm15, xmm15",
            "mov eax, {yield_nr}",
            "vmmcall",
            "mov rax, [rsp + 8]", "xor rax, 0x3", "cmp rbx, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x5", "cmp rbp, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x1", "cmp rcx, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x2", "cmp rdx, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x6", "cmp rsi, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x7", "cmp rdi, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x8", "cmp r8, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x9", "cmp r9, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xa", "cmp r10, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xb", "cmp r11, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xc", "cmp r12, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xd", "cmp r13, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xe", "cmp r14, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xf", "cmp r15, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm0", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm0, xmm0, 0x4e", "movq rax, xmm0", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm1", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm1, xmm1, 0x4e", "movq rax, xmm1", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm2", "cmp rax, r10", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm2, xmm2, 0x4e", "movq rax, xmm2", "cmp rax, r10", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm3", "cmp rax, r11", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm3, xmm3, 0x4e", "movq rax, xmm3", "cmp rax, r11", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm4", "cmp rax, r12", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm4, xmm4, 0x4e", "movq rax, xmm4", "cmp rax, r12", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm5", "cmp rax, r13", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm5, xmm5, 0x4e", "movq rax, xmm5", "cmp rax, r13", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm6", "cmp rax, r14", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm6, xmm6, 0x4e", "movq rax, xmm6", "cmp rax, r14", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm7", "cmp rax, r15", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm7, xmm7, 0x4e", "movq rax, xmm7", "cmp rax, r15", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm8", "cmp rax, rbx", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm8, xmm8, 0x4e", "movq rax, xmm8", "cmp rax, rbx", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm9", "cmp rax, rbp", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm9, xmm9, 0x4e", "movq rax, xmm9", "cmp rax, rbp", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm10", "cmp rax, rcx", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm10, xmm10, 0x4e", "movq rax, xmm10", "cmp rax, rcx", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm11", "cmp rax, rdx", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm11, xmm11, 0x4e", "movq rax, xmm11", "cmp rax, rdx", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm12", "cmp rax, rsi", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm12, xmm12, 0x4e", "movq rax, xmm12", "cmp rax, rsi", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm13", "cmp rax, rdi", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm13, xmm13, 0x4e", "movq rax, xmm13", "cmp rax, rdi", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm14", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm14, xmm14, 0x4e", "movq rax, xmm14", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm15", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm15, xmm15, 0x4e", "movq rax, xmm15", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:",
            "pop rax",
            "add rsp, 8",
            "pop rbp",
            "pop rbx",
            yield_nr = const nr::YIELD,
            inout("rax") seed => errors,
            out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
        )
    };
    errors
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
