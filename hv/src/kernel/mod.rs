//! Boot and host set-up of the kernel binary.
//!
//! * [`boot`]: the multiboot header and the 32-bit to 64-bit trampoline.
//! * [`console`]: the COM1 console and the `log` back-end.
//! * [`gdt`]: GDT and TSS with the interrupt stacks.
//! * [`idt`]: exception entry stubs; any host exception is fatal.
//! * [`heap`]: the global allocator.
//! * [`multiboot`]: reading the boot information.
//! * [`fatal`]: panic and end-of-run paths (isa-debug-exit).
//! * [`timer`]: the PIC and the 100 Hz PIT that end guests' time slices.
//! * [`start`]: the Rust entry point that ties them together.

pub mod boot;
pub mod console;
pub mod fatal;
pub mod gdt;
pub mod heap;
pub mod idt;
pub mod multiboot;
pub mod start;
pub mod timer;
