//! The vendor-neutral part of the world switch, shared by the SVM and VMX vCPUs.
//!
//! Neither VMRUN/#VMEXIT (AMD APM vol. 2, 15.5-15.6) nor VM entry/exit (Intel SDM
//! vol. 3C, chapters 27-28) switch most general-purpose registers or the x87/SSE
//! state, so both world switches keep them in a [`SwitchState`] and move them with the
//! same instructions: the `load_guest_gprs!` and `store_guest_gprs!` assembly
//! fragments and FXSAVE/FXRSTOR on the two [`FxArea`]s.

use core::mem::offset_of;

/// A 512-byte FXSAVE area (Intel SDM vol. 1 10.5.1; AMD APM vol. 2 11.4.4).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub(crate) struct FxArea([u8; 512]);

impl FxArea {
    /// The x87/SSE state after FNINIT with MXCSR at its reset value: FCW = 0x037F
    /// (offset 0), MXCSR = 0x1F80 (offset 24) (Intel SDM vol. 1 10.5.1).
    fn initial() -> Self {
        let mut a = [0u8; 512];
        a[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
        a[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
        Self(a)
    }

    /// An all-zero area, to be filled by FXSAVE before it is ever loaded.
    fn zeroed() -> Self {
        Self([0; 512])
    }
}

/// Everything the world switch saves besides the VMCB or VMCS.
#[repr(C, align(16))]
pub(crate) struct SwitchState {
    /// Guest GPRs by [`Reg`](crate::vcpu::Reg) number; the slots of registers the
    /// hardware switches itself (RSP; with SVM also RAX) are unused.
    pub(crate) gprs: [u64; 16],
    /// The guest's x87/SSE state while the host runs.
    pub(crate) guest_fx: FxArea,
    /// The host's x87/SSE state while the guest runs.
    pub(crate) host_fx: FxArea,
}

impl SwitchState {
    /// The state of a new vCPU: zeroed GPRs and the reset x87/SSE state.
    pub(crate) fn new() -> Self {
        Self {
            gprs: [0; 16],
            guest_fx: FxArea::initial(),
            host_fx: FxArea::zeroed(),
        }
    }

    /// A copy of `parent`'s guest registers and x87/SSE state, for a forked vCPU.
    pub(crate) fn fork(parent: &Self) -> Self {
        Self {
            gprs: parent.gprs,
            guest_fx: parent.guest_fx,
            host_fx: FxArea::zeroed(),
        }
    }
}

/// Offset of [`SwitchState::gprs`], the `gprs` operand of the world switches.
pub(crate) const GPRS: usize = offset_of!(SwitchState, gprs);
/// Offset of [`SwitchState::guest_fx`], the `guest_fx` operand of the world switches.
pub(crate) const GUEST_FX: usize = offset_of!(SwitchState, guest_fx);
/// Offset of [`SwitchState::host_fx`], the `host_fx` operand of the world switches.
pub(crate) const HOST_FX: usize = offset_of!(SwitchState, host_fx);

/// Assembly: loads RCX, RDX, RBX, RBP, RSI and R8-R15 from the `SwitchState` at RDI.
///
/// The template names a `gprs` operand (give it [`GPRS`]). RAX, RSP and RDI are left
/// to the caller: RSP and (with SVM) RAX are switched by the hardware, and RDI, the
/// base of every load, is loaded last.
macro_rules! load_guest_gprs {
    () => {
        concat!(
            "mov rcx, [rdi + {gprs} + 1*8]\n",
            "mov rdx, [rdi + {gprs} + 2*8]\n",
            "mov rbx, [rdi + {gprs} + 3*8]\n",
            "mov rbp, [rdi + {gprs} + 5*8]\n",
            "mov rsi, [rdi + {gprs} + 6*8]\n",
            "mov r8,  [rdi + {gprs} + 8*8]\n",
            "mov r9,  [rdi + {gprs} + 9*8]\n",
            "mov r10, [rdi + {gprs} + 10*8]\n",
            "mov r11, [rdi + {gprs} + 11*8]\n",
            "mov r12, [rdi + {gprs} + 12*8]\n",
            "mov r13, [rdi + {gprs} + 13*8]\n",
            "mov r14, [rdi + {gprs} + 14*8]\n",
            "mov r15, [rdi + {gprs} + 15*8]",
        )
    };
}
pub(crate) use load_guest_gprs;

/// Assembly: stores RCX, RDX, RBX, RBP, RSI and R8-R15 into the `SwitchState` at RDI.
///
/// The counterpart of [`load_guest_gprs!`]; the template names a `gprs` operand (give
/// it [`GPRS`]). RAX, RSP and the guest's RDI are left to the caller.
macro_rules! store_guest_gprs {
    () => {
        concat!(
            "mov [rdi + {gprs} + 1*8], rcx\n",
            "mov [rdi + {gprs} + 2*8], rdx\n",
            "mov [rdi + {gprs} + 3*8], rbx\n",
            "mov [rdi + {gprs} + 5*8], rbp\n",
            "mov [rdi + {gprs} + 6*8], rsi\n",
            "mov [rdi + {gprs} + 8*8], r8\n",
            "mov [rdi + {gprs} + 9*8], r9\n",
            "mov [rdi + {gprs} + 10*8], r10\n",
            "mov [rdi + {gprs} + 11*8], r11\n",
            "mov [rdi + {gprs} + 12*8], r12\n",
            "mov [rdi + {gprs} + 13*8], r13\n",
            "mov [rdi + {gprs} + 14*8], r14\n",
            "mov [rdi + {gprs} + 15*8], r15",
        )
    };
}
pub(crate) use store_guest_gprs;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::Reg;

    #[test]
    fn switch_state_layout_suits_fxsave() {
        // FXSAVE/FXRSTOR need 16-byte aligned areas (SDM vol. 2A, FXSAVE).
        assert_eq!(GUEST_FX % 16, 0);
        assert_eq!(HOST_FX % 16, 0);
        assert_eq!(core::mem::align_of::<SwitchState>(), 16);
        assert_eq!(GPRS, 0);
    }

    #[test]
    fn gpr_slots_follow_reg_numbers() {
        // The assembly fragments index `gprs` by the x86 register encoding.
        let slots = [
            (Reg::Rax, 0),
            (Reg::Rcx, 1),
            (Reg::Rdx, 2),
            (Reg::Rbx, 3),
            (Reg::Rsp, 4),
            (Reg::Rbp, 5),
            (Reg::Rsi, 6),
            (Reg::Rdi, 7),
            (Reg::R8, 8),
            (Reg::R9, 9),
            (Reg::R10, 10),
            (Reg::R11, 11),
            (Reg::R12, 12),
            (Reg::R13, 13),
            (Reg::R14, 14),
            (Reg::R15, 15),
        ];
        for (reg, slot) in slots {
            assert_eq!(reg as usize, slot, "{reg:?}");
        }
    }

    #[test]
    fn new_and_fork_states() {
        let mut s = SwitchState::new();
        assert_eq!(s.gprs, [0; 16]);
        assert_eq!(&s.guest_fx.0[0..2], &0x037Fu16.to_le_bytes());
        assert_eq!(&s.guest_fx.0[24..28], &0x1F80u32.to_le_bytes());
        assert!(s.host_fx.0.iter().all(|&b| b == 0));
        s.gprs[3] = 0xDEAD;
        s.guest_fx.0[100] = 7;
        s.host_fx.0[5] = 9;
        let c = SwitchState::fork(&s);
        assert_eq!(c.gprs, s.gprs);
        assert_eq!(c.guest_fx.0, s.guest_fx.0);
        assert!(c.host_fx.0.iter().all(|&b| b == 0));
    }
}
