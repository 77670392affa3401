//! The hypervisor kernel: a multiboot image that boots on bare metal (or in an
//! emulator), sets up the host (console, GDT/TSS, IDT, heap, frame allocator) and hands
//! over to [`hv::hypervisor`], which runs the guests from the boot modules.
//!
//! Everything hardware-specific to booting lives in [`kernel`]; the vCPU back-ends
//! and the guest logic live in the `hv` library.
#![no_std]
#![no_main]

extern crate alloc;

mod kernel;

guest_images::bare_metal_runtime!();

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    kernel::fatal::panic(info)
}
