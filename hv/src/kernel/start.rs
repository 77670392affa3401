//! The Rust entry point: host set-up in order, then the hypervisor proper.

use alloc::vec::Vec;

use hv::abi::RunStatus;
use hv::platform::{self, IDENTITY_LIMIT};
use hv::settings::{self, LogLevel, SelfTest};

use super::multiboot::{BOOTLOADER_MAGIC, RawBootInfo};
use super::{console, fatal, gdt, heap, idt, timer};
use crate::kprintln;

/// Size of the kernel heap.
const HEAP_SIZE: u64 = 32 << 20;
const TWO_MIB: u64 = 2 << 20;

unsafe extern "C" {
    /// End of the kernel image, `.bss` included (from `linker.ld`).
    static __kernel_end: u8;
}

fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// Called by the boot trampoline with the multiboot magic and information address.
#[unsafe(no_mangle)]
extern "C" fn hv_main(magic: u32, info: u32) -> ! {
    console::init(log::LevelFilter::Info);
    gdt::init();
    idt::init();
    timer::init();
    hv::clock::set_tsc_hz(timer::calibrate_tsc());
    log::info!(
        "stage-2 hypervisor starting (TSC {} MHz)",
        hv::clock::tsc_hz() / 1_000_000
    );
    if magic != BOOTLOADER_MAGIC {
        log::error!("not started by a multiboot loader (magic {magic:#x})");
        fatal::exit(RunStatus::BadConfig);
    }
    // SAFETY: `info` is the multiboot information address from EBX, below 4 GiB and
    // identity-mapped by the boot page tables.
    let boot = unsafe { RawBootInfo::read(u64::from(info)) };

    // The heap goes above everything the loader placed: kernel, modules, boot data.
    let kernel_end = &raw const __kernel_end as u64;
    let floor = boot.high_water.max(kernel_end).next_multiple_of(TWO_MIB);
    let ram = &boot.ram[..boot.ram_count];
    // The modules are copied onto the heap (a size-class allocator: up to twice their
    // size each), so big ones (a Linux kernel and initrd) get a bigger heap.
    let module_bytes: u64 = boot.modules[..boot.module_count]
        .iter()
        .map(|m| m.end.saturating_sub(m.start))
        .sum();
    let heap_size = HEAP_SIZE.max((2 * module_bytes + (24 << 20)).next_multiple_of(TWO_MIB));
    let Some(heap_start) = ram
        .iter()
        .map(|&(s, e)| {
            (
                s.max(floor).next_multiple_of(TWO_MIB),
                e.min(IDENTITY_LIMIT),
            )
        })
        .find(|&(s, e)| s + heap_size <= e)
        .map(|(s, _)| s)
    else {
        log::error!(
            "no room for a {} MiB heap above {floor:#x}",
            heap_size >> 20
        );
        fatal::exit(RunStatus::BadConfig);
    };
    heap::init(heap_start as usize, heap_size as usize);
    let reserved_end = heap_start + heap_size;

    let cmdline = boot.cmdline();
    let hv_settings = match settings::parse_hv_cmdline(&cmdline) {
        Ok(s) => s,
        Err(e) => {
            log::error!("command line `{cmdline}` refused: {e}");
            kprintln!("HV: CONFIGURATION REFUSED");
            fatal::exit(RunStatus::BadConfig);
        }
    };
    console::set_level(level_filter(hv_settings.log));

    // Frames: RAM below the identity limit, above the kernel, boot data and heap.
    let frames: Vec<(u64, u64)> = ram
        .iter()
        .map(|&(s, e)| (s.max(reserved_end).max(1 << 20), e.min(IDENTITY_LIMIT)))
        .filter(|&(s, e)| s < e)
        .collect();
    platform::init_frames(&frames);
    let (_, total) = platform::frame_usage();
    log::info!(
        "memory: {} MiB of frames, heap {} MiB at {heap_start:#x}",
        total >> 8,
        heap_size >> 20
    );

    match hv_settings.selftest {
        Some(SelfTest::Exception) => {
            log::warn!("selftest: taking a host exception");
            // SAFETY: deliberately raises #UD, which the IDT reports as a host fault.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        Some(SelfTest::Panic) => panic!("selftest: deliberate host panic"),
        _ => {}
    }

    let modules = boot.modules();
    let guests = modules
        .into_iter()
        .map(|m| hv::hypervisor::BootModule {
            cmdline: m.cmdline,
            image: m.data,
        })
        .collect();
    let status = hv::hypervisor::start(&hv_settings, guests, &mut console::KernelConsole);
    log::debug!("heap in use at exit: {} KiB", heap::in_use() >> 10);
    log::info!(
        "{} timer ticks ({} Hz) during the run",
        timer::ticks(),
        timer::HZ
    );
    fatal::exit(status)
}
