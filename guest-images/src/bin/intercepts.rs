//! Scenario `intercepts`: every instruction a guest could use against the host ends
//! the guest that tries it, with the instruction named, and nothing else.
//!
//! The guest clones itself once per instruction of its vendor's list (AMD: VMRUN,
//! VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA of the host's ASID 0, INVD, XSETBV, RDPMC;
//! Intel: VMXON, VMCLEAR, VMPTRLD, VMREAD, VMWRITE, VMLAUNCH, INVEPT, INVVPID, INVD,
//! XSETBV); each member of the family then executes its own one. Every member expects
//! `fault:instruction`, and the boot test checks that each instruction's name appears
//! in a guest's end.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::clone_guest;
use guest_images::rt::cpu::{Forbidden, on_intel, try_forbidden};
use guest_images::{check, println};

/// AMD SVM's instructions (AMD APM vol. 2 15.9-15.14).
const AMD: &[Forbidden] = &[
    Forbidden::Vmrun,
    Forbidden::Vmload,
    Forbidden::Vmsave,
    Forbidden::Stgi,
    Forbidden::Clgi,
    Forbidden::Skinit,
    Forbidden::Invlpga,
    Forbidden::Invd,
    Forbidden::Xsetbv,
    Forbidden::Rdpmc,
];

/// Intel VMX's instructions (SDM vol. 3C 26.1.2).
const INTEL: &[Forbidden] = &[
    Forbidden::Vmxon,
    Forbidden::Vmclear,
    Forbidden::Vmptrld,
    Forbidden::Vmread,
    Forbidden::Vmwrite,
    Forbidden::Vmlaunch,
    Forbidden::Invept,
    Forbidden::Invvpid,
    Forbidden::Invd,
    Forbidden::Xsetbv,
];

/// A page of the guest's own RAM used as the memory operand.
const PAGE: u64 = 0x20_0000;

fn scenario() {
    let list = if on_intel() { INTEL } else { AMD };
    let mut mine = list.len() - 1;
    for (k, _) in list.iter().enumerate().take(list.len() - 1) {
        let id = clone_guest();
        check!(id >= 0, "clone {k} failed: {id}");
        if id == 0 {
            mine = k;
            break;
        }
    }
    println!("trying {:?}", list[mine]);
    try_forbidden(list[mine], PAGE);
    println!("BREACH: {:?} returned to the guest", list[mine]);
}

guest_images::guest_main!(scenario);
