//! Scenario `badmsr`: reads an MSR the virtual CPU does not have. The hypervisor
//! injects #GP(0), as the hardware would (Intel SDM vol. 2B "RDMSR"); with no IDT the
//! guest then triple-faults, and its end names the injected #GP and the MSR. A
//! hypervisor that returned a value instead lets the guest reach its `FAIL` line.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::cpu::rdmsr;
use guest_images::{check, println};

/// An MSR no x86 CPU defines.
const UNKNOWN_MSR: u32 = 0xC001_1234;

fn scenario() {
    // A known MSR first: IA32_PAT at its reset value.
    check!(rdmsr(0x277) == 0x0007_0406_0007_0406, "PAT not at reset");
    println!("reading MSR {UNKNOWN_MSR:#x}");
    let v = rdmsr(UNKNOWN_MSR);
    check!(
        false,
        "RDMSR of an unknown MSR returned {v:#x} instead of #GP"
    );
}

guest_images::guest_main!(scenario);
