//! The hypervisor kernel: a multiboot image that boots on bare metal (or in an
//! emulator), sets up the host (console, GDT/TSS, IDT, heap, frame allocator) and hands
//! over to [`hv::hypervisor`], which runs the guests from the boot modules.
//!
//! Everything hardware-specific to booting lives in [`kernel`]; the vCPU back-ends
//! and the guest logic live in the `hv` library.
//!
//! `cargo xtask build` compiles it with `--cfg hv_kernel` (bare metal: no `std`, no
//! `main`, own panic handler and allocator). Without that cfg (a workspace-wide
//! `cargo clippy` or `cargo build` on the host, where feature unification may pull `std`
//! into dependencies) the same code is checked as an ordinary host binary that only
//! explains how to build the kernel.
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

extern crate alloc;

mod kernel;

#[cfg(hv_kernel)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    kernel::fatal::panic(info)
}

#[cfg(not(hv_kernel))]
fn main() {
    eprintln!("the hypervisor kernel is built and booted with `cargo xtask build|run`");
    std::process::exit(2);
}
