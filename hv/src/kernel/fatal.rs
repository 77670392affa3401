//! Ending the run: the isa-debug-exit port, panics, and the final halt.

use hv::abi::RunStatus;
use x86_64::instructions::port::Port;

use super::console;

/// QEMU's `isa-debug-exit` device port (`-device isa-debug-exit,iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends the run with `status`: writes it to the debug-exit port (QEMU exits with
/// `(status << 1) | 1`), then halts forever where no such device exists.
pub fn exit(status: RunStatus) -> ! {
    // Emulators without the debug-exit device (Bochs) learn the status from this line.
    console::print_forced(format_args!(
        "HV: EXIT STATUS {}\n",
        status.qemu_exit_status()
    ));
    console::drain();
    let mut port = Port::<u32>::new(DEBUG_EXIT_PORT);
    // SAFETY: writing the debug-exit port ends the emulator or does nothing.
    unsafe { port.write(status as u32) };
    // Bochs' magic breakpoint (`xchg bx, bx`, enabled by `magic_break: enabled=1`)
    // stops Bochs, whose debugger script then quits; elsewhere it changes nothing.
    // SAFETY: exchanging BX with itself has no effect.
    unsafe { core::arch::asm!("xchg bx, bx", options(nomem, nostack, preserves_flags)) };
    halt_forever()
}

/// Stops this CPU with interrupts disabled.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// The panic handler: prints the message and ends the run with [`RunStatus::HostFault`].
#[cfg_attr(not(hv_kernel), allow(dead_code))]
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::print_forced(format_args!("\n[hv] PANIC: {info}\n"));
    console::print_forced(format_args!(
        "HV: HOST FAULT (panic), status {}\n",
        RunStatus::HostFault.qemu_exit_status()
    ));
    exit(RunStatus::HostFault)
}
