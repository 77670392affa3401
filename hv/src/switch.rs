//! The vendor-neutral part of the world switch, shared by the SVM and VMX vCPUs.
//!
//! Neither VMRUN/#VMEXIT (AMD APM vol. 2, 15.5-15.6) nor VM entry/exit (Intel SDM
//! vol. 3C, chapters 27-28) switch most general-purpose registers or the x87/SSE
//! state, so both world switches keep them in a [`SwitchState`] and move them with the
//! same instructions: the `load_guest_gprs!` and `store_guest_gprs!` assembly
//! fragments and FXSAVE/FXRSTOR on the two [`FxArea`]s.
//!
//! The rest of what neither vendor switches lives in [`SoftRegs`] and is moved by
//! [`enter_guest`] before and [`leave_guest`] after each world switch: DR0-DR3 (both
//! vendors), PKRU and TSC_AUX (both, where the CPU has them), and on VMX also DR6,
//! CR2, KERNEL_GS_BASE and the SYSCALL MSRs (SVM keeps those in the VMCB: DR6 and CR2
//! by VMRUN/#VMEXIT, the others by VMLOAD/VMSAVE, APM vol. 2 15.5.2). XCR0 is never
//! the guest's (XSETBV is intercepted); [`xcr0_changed`] checks that after each exit.

use core::arch::asm;
use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::registers::model_specific::Msr;

use crate::cpu::msr::number;

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

/// Guest state that neither VMRUN/#VMEXIT nor VM entry/exit switches, kept while the
/// host runs (which of it a vendor uses: [`Vendor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct SoftRegs {
    /// DR0-DR3 (Intel SDM vol. 3B 18.2.1).
    pub(crate) dr: [u64; 4],
    /// DR6 (VMX only).
    pub(crate) dr6: u64,
    /// CR2 (VMX only).
    pub(crate) cr2: u64,
    /// CR8 (VMX only: emulated, as MOV CR8 exits).
    pub(crate) cr8: u64,
    /// IA32_KERNEL_GS_BASE (VMX only).
    pub(crate) kernel_gs_base: u64,
    /// IA32_STAR, LSTAR, CSTAR, FMASK (VMX only).
    pub(crate) syscall: [u64; 4],
    /// IA32_TSC_AUX.
    pub(crate) tsc_aux: u64,
    /// PKRU.
    pub(crate) pkru: u64,
}

impl SoftRegs {
    /// The values at reset (Intel SDM vol. 3A 10.1.1, table 10-1).
    pub(crate) const RESET: Self = Self {
        dr: [0; 4],
        dr6: crate::vcpu::state::DR6_RESET,
        cr2: 0,
        cr8: 0,
        kernel_gs_base: 0,
        syscall: [0; 4],
        tsc_aux: 0,
        pkru: 0,
    };
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
    /// The rest of the guest state switched in software.
    pub(crate) soft: SoftRegs,
}

impl SwitchState {
    /// The state of a new vCPU: zeroed GPRs and the reset x87/SSE and soft state.
    pub(crate) fn new() -> Self {
        Self {
            gprs: [0; 16],
            guest_fx: FxArea::initial(),
            host_fx: FxArea::zeroed(),
            soft: SoftRegs::RESET,
        }
    }

    /// A copy of `parent`'s guest registers, x87/SSE and soft state, for a forked vCPU.
    pub(crate) fn fork(parent: &Self) -> Self {
        Self {
            gprs: parent.gprs,
            guest_fx: parent.guest_fx,
            host_fx: FxArea::zeroed(),
            soft: parent.soft,
        }
    }
}

/// Which vendor's world switch the software part completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vendor {
    /// SVM: the VMCB holds DR6, DR7, CR2, CR8 (V_TPR), and (VMLOAD/VMSAVE) the
    /// SYSCALL MSRs and KERNEL_GS_BASE.
    Svm,
    /// VMX: the VMCS holds DR7 only.
    Vmx,
}

/// The optional host features the software switch uses, found once by
/// [`detect_host_features`].
static HAS_PKU: AtomicBool = AtomicBool::new(false);
static HAS_XSAVE: AtomicBool = AtomicBool::new(false);
static HAS_TSC_AUX: AtomicBool = AtomicBool::new(false);
/// The value of each load-only MSR now in the CPU (STAR, LSTAR, CSTAR, FMASK,
/// TSC_AUX), so an entry writes only what changed; `u64::MAX` = unknown.
static LOADED: [AtomicU64; 5] = [const { AtomicU64::new(u64::MAX) }; 5];

/// CR4.PKE (Intel SDM vol. 3A 2.5).
const CR4_PKE: u64 = 1 << 22;
/// CR4.OSXSAVE (Intel SDM vol. 3A 2.5).
const CR4_OSXSAVE: u64 = 1 << 18;
/// The host's XCR0: x87 only, the reset value (Intel SDM vol. 1 13.3).
const HOST_XCR0: u64 = 1;

/// Finds out whether the CPU has PKU (CPUID.7.0:ECX bit 3) and IA32_TSC_AUX (RDTSCP,
/// CPUID.8000_0001:EDX bit 27, or RDPID, CPUID.7.0:ECX bit 22), and enables CR4.PKE in
/// the host so that the world switch can read and write PKRU (RDPKRU/WRPKRU need it;
/// the host maps no user pages, so keys never restrict it), and CR4.OSXSAVE where the
/// CPU has XSAVE (CPUID.1:ECX bit 26) so that [`xcr0_changed`] can read XCR0. Call
/// once, before any vCPU is created (VMX copies the host's CR4 into each VMCS).
pub(crate) fn detect_host_features() {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    let max = __cpuid(0).eax;
    let leaf7 = if max >= 7 { __cpuid_count(7, 0).ecx } else { 0 };
    let ext = if __cpuid(0x8000_0000).eax >= 0x8000_0001 {
        __cpuid(0x8000_0001).edx
    } else {
        0
    };
    let pku = leaf7 & (1 << 3) != 0;
    let xsave = __cpuid(1).ecx & (1 << 26) != 0;
    HAS_TSC_AUX.store(
        ext & (1 << 27) != 0 || leaf7 & (1 << 22) != 0,
        Ordering::Relaxed,
    );
    // PKE only makes RDPKRU/WRPKRU usable and applies keys to user pages, which the
    // host does not map; OSXSAVE only makes XGETBV/XSETBV usable (to check XCR0 after
    // each exit), the host using no state beyond x87/SSE.
    if pku {
        set_host_cr4_bits(CR4_PKE);
    }
    HAS_PKU.store(pku, Ordering::Relaxed);
    if xsave {
        set_host_cr4_bits(CR4_OSXSAVE);
    }
    HAS_XSAVE.store(xsave, Ordering::Relaxed);
}

/// Checks after an exit that the guest left XCR0 alone: XSETBV is intercepted on both
/// vendors, but an emulator may not honour the intercept (QEMU 7.2's TCG does not). A
/// changed XCR0 is put back to the host's value and returned, so that the vCPU ends
/// the guest as if the intercept had fired.
pub(crate) fn xcr0_changed() -> Option<u64> {
    if !HAS_XSAVE.load(Ordering::Relaxed) {
        return None;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set in the host (`detect_host_features`); XGETBV only reads.
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags))
    };
    let xcr0 = (u64::from(hi) << 32) | u64::from(lo);
    if xcr0 == HOST_XCR0 {
        return None;
    }
    // SAFETY: x87 only is always a valid XCR0 (Intel SDM vol. 1 13.3).
    unsafe {
        asm!("xsetbv", in("ecx") 0, in("eax") HOST_XCR0 as u32, in("edx") 0,
            options(nomem, nostack, preserves_flags))
    };
    Some(xcr0)
}

/// Sets `bits` in the host's CR4.
fn set_host_cr4_bits(bits: u64) {
    // SAFETY: callers pass only PKE and OSXSAVE, after CPUID reported the feature;
    // neither changes how the host's own (supervisor, x87/SSE-only) code runs.
    unsafe {
        asm!(
            "mov {0}, cr4",
            "or {0}, {bits}",
            "mov cr4, {0}",
            out(reg) _,
            bits = in(reg) bits,
            options(nostack)
        );
    }
}

/// Whether the world switch saves and restores PKRU (so PKU may be shown to guests).
pub(crate) fn pkru_switched() -> bool {
    HAS_PKU.load(Ordering::Relaxed)
}

/// Writes `value` to `msr` unless [`LOADED`]`[slot]` says the CPU holds it already.
fn load_msr(slot: usize, msr: u32, value: u64) {
    if LOADED[slot].load(Ordering::Relaxed) != value {
        // SAFETY: the MSRs written here exist on every x86_64 CPU (TSC_AUX only when
        // `HAS_TSC_AUX`), the values were checked by `crate::cpu::msr::write` (canonical
        // addresses, no reserved bits), and the host uses neither SYSCALL nor TSC_AUX.
        unsafe { Msr::new(msr).write(value) };
        LOADED[slot].store(value, Ordering::Relaxed);
    }
}

/// Loads the guest's software-switched state into the CPU, right before the world
/// switch. The host uses no debug registers (its DR7 disables DR0-DR3), no SYSCALL, no
/// KERNEL_GS_BASE, no TSC_AUX and no user pages, so their host values need no saving.
pub(crate) fn enter_guest(soft: &SoftRegs, vendor: Vendor) {
    // SAFETY: with the host's DR7 (breakpoints disabled), DR0-DR3 only hold addresses.
    unsafe {
        asm!(
            "mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
            in(reg) soft.dr[0], in(reg) soft.dr[1], in(reg) soft.dr[2], in(reg) soft.dr[3],
            options(nomem, nostack, preserves_flags)
        )
    };
    if vendor == Vendor::Vmx {
        // SAFETY: DR6 is only status; CR2 is only read by the host's page-fault handler,
        // which ends the run anyway.
        unsafe {
            asm!("mov dr6, {}", "mov cr2, {}", in(reg) soft.dr6, in(reg) soft.cr2,
                options(nomem, nostack, preserves_flags));
        }
        // SAFETY: KERNEL_GS_BASE exists on every x86_64 CPU; the value was checked to be
        // canonical by `crate::cpu::msr::write` (or saved from the CPU).
        unsafe { Msr::new(number::KERNEL_GS_BASE).write(soft.kernel_gs_base) };
        for (i, (msr, value)) in [number::STAR, number::LSTAR, number::CSTAR, number::SFMASK]
            .into_iter()
            .zip(soft.syscall)
            .enumerate()
        {
            load_msr(i, msr, value);
        }
    }
    if HAS_TSC_AUX.load(Ordering::Relaxed) {
        load_msr(4, number::TSC_AUX, soft.tsc_aux);
    }
    if HAS_PKU.load(Ordering::Relaxed) {
        // SAFETY: CR4.PKE is set in the host (`detect_host_features`); WRPKRU needs ECX
        // = EDX = 0 and only changes the access rights of user pages.
        unsafe {
            asm!("wrpkru", in("eax") soft.pkru as u32, in("ecx") 0, in("edx") 0,
                options(nomem, nostack, preserves_flags))
        };
    }
}

/// Saves the guest's software-switched state that the guest can change without an
/// exit (debug registers, PKRU; on VMX also DR6, CR2 and KERNEL_GS_BASE, which SWAPGS
/// changes), right after the world switch.
pub(crate) fn leave_guest(soft: &mut SoftRegs, vendor: Vendor) {
    let (d0, d1, d2, d3): (u64, u64, u64, u64);
    // SAFETY: reading debug registers has no side effects.
    unsafe {
        asm!(
            "mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3",
            out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3,
            options(nomem, nostack, preserves_flags)
        )
    };
    soft.dr = [d0, d1, d2, d3];
    if vendor == Vendor::Vmx {
        let (dr6, cr2): (u64, u64);
        // SAFETY: reading DR6 and CR2 has no side effects.
        unsafe {
            asm!("mov {}, dr6", "mov {}, cr2", out(reg) dr6, out(reg) cr2,
                options(nomem, nostack, preserves_flags));
        }
        // SAFETY: KERNEL_GS_BASE exists on every x86_64 CPU; reading it has no effect.
        soft.kernel_gs_base = unsafe { Msr::new(number::KERNEL_GS_BASE).read() };
        soft.dr6 = dr6;
        soft.cr2 = cr2;
    }
    if HAS_PKU.load(Ordering::Relaxed) {
        let pkru: u32;
        // SAFETY: CR4.PKE is set in the host; RDPKRU needs ECX = 0 and only reads.
        unsafe {
            asm!("rdpkru", out("eax") pkru, in("ecx") 0, out("edx") _,
                options(nomem, nostack, preserves_flags))
        };
        soft.pkru = u64::from(pkru);
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
