//! The VMX world switch: the assembly that saves the host's callee-saved and x87/SSE
//! registers, loads the guest's, enters with VMLAUNCH or VMRESUME, and at the VM exit
//! (HOST_RIP = `vmx_vm_exit`) stores the guest's registers and restores the host's.

use super::fields::natural;
use crate::switch::{GPRS, GUEST_FX, HOST_FX, SwitchState, load_guest_gprs, store_guest_gprs};

core::arch::global_asm!(
    ".section .text.vmx_world_switch, \"ax\"",
    ".global vmx_world_switch",
    // rdi = &mut SwitchState, rsi = launched (0: VMLAUNCH, else VMRESUME).
    // Returns 0 after a VM exit, 1 when the entry instruction failed (VMfail).
    "vmx_world_switch:",
    "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
    "push rdi",
    "fxsave [rdi + {host_fx}]",
    "fxrstor [rdi + {guest_fx}]",
    "mov rax, {host_rsp}",
    "vmwrite rax, rsp",
    "test rsi, rsi",
    // MOV leaves the flags of TEST intact.
    "mov rax, [rdi + {gprs} + 0*8]",
    load_guest_gprs!(),
    "mov rdi, [rdi + {gprs} + 7*8]",
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    // Only reached when the entry failed: RSP is still the host's.
    "3:",
    "pop rdi",
    "fxrstor [rdi + {host_fx}]",
    "mov eax, 1",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "ret",
    // VM exit (HOST_RIP): RSP is the host RSP written above, pointing at the saved rdi.
    ".global vmx_vm_exit",
    "vmx_vm_exit:",
    "push rdi",
    "mov rdi, [rsp + 8]",
    "mov [rdi + {gprs} + 0*8], rax",
    store_guest_gprs!(),
    "pop rax",
    "mov [rdi + {gprs} + 7*8], rax",
    "fxsave [rdi + {guest_fx}]",
    "fxrstor [rdi + {host_fx}]",
    // A VM exit clears RFLAGS.IF. A timer interrupt that ended the guest's slice (an
    // external-interrupt exit, not acknowledged) is still pending: open a window of
    // one instruction (STI's shadow covers the NOP) for the host's handler.
    "sti",
    "nop",
    "cli",
    "add rsp, 8",
    "xor eax, eax",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "ret",
    gprs = const GPRS,
    guest_fx = const GUEST_FX,
    host_fx = const HOST_FX,
    host_rsp = const natural::HOST_RSP,
);

unsafe extern "C" {
    /// Enters the guest of the current VMCS and returns at its next VM exit (0) or when
    /// the entry instruction fails (1).
    pub(super) fn vmx_world_switch(state: *mut SwitchState, launched: u64) -> u64;
    /// The VM-exit entry point (HOST_RIP); never called directly.
    pub(super) fn vmx_vm_exit();
}
