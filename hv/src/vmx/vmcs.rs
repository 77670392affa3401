//! Programming a VMCS: VMREAD/VMWRITE of the current VMCS ([`read_current`],
//! [`Writer`]), the control and host state every vCPU gets, a guest's start state
//! (long mode or real mode), and the guest fields a fork copies from its parent.

use super::caps::{CR4_VMXE, VmxError, apply_fixed};
use super::fields::{ar, entry_ctl, field16, field32, field64, natural};
use super::host::{host_segments, read_cr0, read_cr3, read_cr4};
use super::instr::{self, VmFail};
use super::probe::rdmsr;
use super::vcpu::VmxHost;
use super::world::vmx_vm_exit;
use crate::vcpu::StartState;
use crate::vcpu::state::PAT_RESET;

/// IA32_EFER (SDM vol. 4, table 2-2).
const MSR_EFER: u32 = 0xC000_0080;
/// IA32_FS_BASE.
const MSR_FS_BASE: u32 = 0xC000_0100;
/// IA32_GS_BASE.
const MSR_GS_BASE: u32 = 0xC000_0101;
/// IA32_SYSENTER_CS.
const MSR_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
const MSR_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
const MSR_SYSENTER_EIP: u32 = 0x176;
/// IA32_PAT.
const MSR_PAT: u32 = 0x277;

/// Guest EFER: LME (bit 8), LMA (bit 10), NXE (bit 11) (SDM vol. 3A 2.2.1).
pub(super) const GUEST_EFER: u64 = (1 << 8) | (1 << 10) | (1 << 11);
/// Guest CR0: PE (0), MP (1), ET (4), NE (5), WP (16), PG (31) (SDM vol. 3A 2.5).
const GUEST_CR0: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
/// Guest CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10) (SDM vol. 3A 2.5).
const GUEST_CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10);
/// Real-mode guest CR0: MP (1), ET (4), NE (5); PE (0) and PG (31) clear (SDM vol. 3A
/// 2.5).
const REAL_MODE_CR0: u64 = (1 << 1) | (1 << 4) | (1 << 5);
/// Real-mode guest CR4: OSFXSR (9), OSXMMEXCPT (10) (SDM vol. 3A 2.5).
const REAL_MODE_CR4: u64 = (1 << 9) | (1 << 10);
/// CR0.PE (bit 0) and CR0.PG (bit 31) (SDM vol. 3A 2.5).
const CR0_PE_PG: u64 = (1 << 0) | (1 << 31);

/// The CR0 of a real-mode guest under the fixed bits: with "unrestricted guest" = 1, VM
/// entry does not require PE and PG even where IA32_VMX_CR0_FIXED0 sets them (SDM
/// vol. 3C 27.3.1.1, vol. 3D A.7).
fn real_mode_cr0(fixed0: u64, fixed1: u64) -> u64 {
    apply_fixed(REAL_MODE_CR0, fixed0 & !CR0_PE_PG, fixed1)
}

/// DR7 at reset (SDM vol. 3B 18.2.4).
const DR7_RESET: u64 = 0x400;
/// Guest RFLAGS at start: the always-one bit 1 and IF (bit 9) (SDM vol. 1 3.4.3).
///
/// With external-interrupt exiting, IF does not mask external interrupts in the guest
/// (SDM vol. 3C 26.3): every one exits to the host, so no interrupt ever reaches a
/// guest whatever its IF. IF = 1 is needed by Bochs 2.7, which computes interrupt
/// masking while loading the guest's RFLAGS before it counts as in VMX non-root
/// operation, and so would keep the timer masked in a guest entered with IF = 0.
pub(super) const RFLAGS_RESET: u64 = 0x202;

/// VMREAD from the current VMCS. Only used by this module once VMXON succeeded and a
/// vCPU's VMCS was made current (a VMREAD without a current VMCS fails and gives 0).
pub(super) fn read_current(field: u32) -> u64 {
    // SAFETY: VMX is on (a `VmxVcpu` exists only after `VmxHost::enable`), and VMREAD
    // only reads the current VMCS.
    unsafe { instr::vmread(field) }
}

/// Collects VMWRITEs and remembers the first failure.
pub(super) struct Writer {
    pub(super) failed: Option<(u32, VmFail)>,
}

impl Writer {
    pub(super) fn w(&mut self, field: u32, value: u64) {
        if self.failed.is_some() {
            return;
        }
        // SAFETY: callers hold a current VMCS (made current by `VmxHost`) and write
        // the guest, host and control state this module computes.
        if let Err(e) = unsafe { instr::vmwrite(field, value) } {
            self.failed = Some((field, e));
        }
    }

    pub(super) fn finish(self) -> Result<(), VmxError> {
        match self.failed {
            None => Ok(()),
            Some((field, e)) => {
                log::error!("VMWRITE of field {field:#06x} failed: {e:?}");
                Err(VmxError::InstructionFailed {
                    what: "VMWRITE",
                    error: e.error(),
                })
            }
        }
    }
}

/// Guest-state fields copied from a parent when a guest is cloned (everything the
/// guest can change besides RIP, RSP, RFLAGS and the general-purpose registers).
pub(super) const CLONED_GUEST_FIELDS: &[u32] = &[
    // IA-32e mode guest differs between long-mode and real-mode guests.
    field32::ENTRY_CONTROLS,
    natural::GUEST_CR0,
    natural::GUEST_CR3,
    natural::GUEST_CR4,
    natural::CR0_READ_SHADOW,
    natural::CR4_READ_SHADOW,
    natural::GUEST_DR7,
    field64::GUEST_EFER,
    field16::GUEST_ES_SELECTOR,
    field16::GUEST_CS_SELECTOR,
    field16::GUEST_SS_SELECTOR,
    field16::GUEST_DS_SELECTOR,
    field16::GUEST_FS_SELECTOR,
    field16::GUEST_GS_SELECTOR,
    field16::GUEST_LDTR_SELECTOR,
    field16::GUEST_TR_SELECTOR,
    field32::GUEST_ES_LIMIT,
    field32::GUEST_CS_LIMIT,
    field32::GUEST_SS_LIMIT,
    field32::GUEST_DS_LIMIT,
    field32::GUEST_FS_LIMIT,
    field32::GUEST_GS_LIMIT,
    field32::GUEST_LDTR_LIMIT,
    field32::GUEST_TR_LIMIT,
    field32::GUEST_GDTR_LIMIT,
    field32::GUEST_IDTR_LIMIT,
    field32::GUEST_ES_AR,
    field32::GUEST_CS_AR,
    field32::GUEST_SS_AR,
    field32::GUEST_DS_AR,
    field32::GUEST_FS_AR,
    field32::GUEST_GS_AR,
    field32::GUEST_LDTR_AR,
    field32::GUEST_TR_AR,
    field32::GUEST_INTERRUPTIBILITY,
    field32::GUEST_SYSENTER_CS,
    natural::GUEST_ES_BASE,
    natural::GUEST_CS_BASE,
    natural::GUEST_SS_BASE,
    natural::GUEST_DS_BASE,
    natural::GUEST_FS_BASE,
    natural::GUEST_GS_BASE,
    natural::GUEST_LDTR_BASE,
    natural::GUEST_TR_BASE,
    natural::GUEST_GDTR_BASE,
    natural::GUEST_IDTR_BASE,
    natural::GUEST_SYSENTER_ESP,
    natural::GUEST_SYSENTER_EIP,
];

impl VmxHost {
    /// Writes the control and host state into the current VMCS.
    pub(super) fn write_controls_and_host(&self, w: &mut Writer, vpid: u16, eptp: u64) {
        let c = &self.caps;
        w.w(field32::PIN_CONTROLS, u64::from(c.pin));
        w.w(field32::PROC_CONTROLS, u64::from(c.proc));
        w.w(field32::PROC_CONTROLS2, u64::from(c.proc2));
        w.w(field32::EXIT_CONTROLS, u64::from(c.exit));
        w.w(field32::ENTRY_CONTROLS, u64::from(c.entry));
        w.w(field32::EXCEPTION_BITMAP, 0);
        w.w(field32::CR3_TARGET_COUNT, 0);
        w.w(field32::EXIT_MSR_STORE_COUNT, 0);
        w.w(field32::EXIT_MSR_LOAD_COUNT, 0);
        w.w(field32::ENTRY_MSR_LOAD_COUNT, 0);
        w.w(field32::ENTRY_INTERRUPTION_INFO, 0);
        // The guest owns CR0; CR4.VMXE is the host's, hidden behind the read shadow.
        w.w(natural::CR0_MASK, 0);
        w.w(natural::CR4_MASK, CR4_VMXE);
        if c.vpid {
            w.w(field16::VPID, u64::from(vpid));
        }
        w.w(field64::EPT_POINTER, eptp);
        w.w(field64::VMCS_LINK_POINTER, u64::MAX);

        let s = host_segments();
        w.w(field16::HOST_CS_SELECTOR, u64::from(s.cs & !7));
        w.w(field16::HOST_SS_SELECTOR, u64::from(s.ss & !7));
        w.w(field16::HOST_DS_SELECTOR, u64::from(s.ds & !7));
        w.w(field16::HOST_ES_SELECTOR, u64::from(s.es & !7));
        w.w(field16::HOST_FS_SELECTOR, u64::from(s.fs & !7));
        w.w(field16::HOST_GS_SELECTOR, u64::from(s.gs & !7));
        w.w(field16::HOST_TR_SELECTOR, u64::from(s.tr & !7));
        w.w(natural::HOST_CR0, read_cr0());
        w.w(natural::HOST_CR3, read_cr3());
        w.w(natural::HOST_CR4, read_cr4());
        w.w(natural::HOST_FS_BASE, rdmsr(MSR_FS_BASE));
        w.w(natural::HOST_GS_BASE, rdmsr(MSR_GS_BASE));
        w.w(natural::HOST_TR_BASE, s.tr_base);
        w.w(natural::HOST_GDTR_BASE, s.gdt_base);
        w.w(natural::HOST_IDTR_BASE, s.idt_base);
        w.w(field32::HOST_SYSENTER_CS, rdmsr(MSR_SYSENTER_CS));
        w.w(natural::HOST_SYSENTER_ESP, rdmsr(MSR_SYSENTER_ESP));
        w.w(natural::HOST_SYSENTER_EIP, rdmsr(MSR_SYSENTER_EIP));
        if c.switches_efer() {
            w.w(field64::HOST_EFER, rdmsr(MSR_EFER));
        }
        if c.switches_pat() {
            w.w(field64::HOST_PAT, rdmsr(MSR_PAT));
        }
        if c.tsc_offsetting() {
            w.w(field64::TSC_OFFSET, 0);
        }
        w.w(field32::ENTRY_EXCEPTION_ERROR_CODE, 0);
        w.w(natural::HOST_RIP, vmx_vm_exit as *const () as u64);
    }

    /// Writes the guest state `start` into the current VMCS (SDM vol. 3C 27.3.1 lists
    /// the checks this state passes). A real-mode start needs the unrestricted-guest
    /// control (checked by
    /// [`VcpuHost::real_mode_support`](crate::hypervisor::VcpuHost::real_mode_support)).
    pub(super) fn write_guest(&self, w: &mut Writer, start: &StartState) {
        let c = &self.caps;
        /// A segment register's four fields: selector, limit, access rights, base.
        type SegmentFields = (u32, u32, u32, u32);
        const CS: SegmentFields = (
            field16::GUEST_CS_SELECTOR,
            field32::GUEST_CS_LIMIT,
            field32::GUEST_CS_AR,
            natural::GUEST_CS_BASE,
        );
        const SS: SegmentFields = (
            field16::GUEST_SS_SELECTOR,
            field32::GUEST_SS_LIMIT,
            field32::GUEST_SS_AR,
            natural::GUEST_SS_BASE,
        );
        const DATA_SEGMENTS: [SegmentFields; 4] = [
            (
                field16::GUEST_DS_SELECTOR,
                field32::GUEST_DS_LIMIT,
                field32::GUEST_DS_AR,
                natural::GUEST_DS_BASE,
            ),
            (
                field16::GUEST_ES_SELECTOR,
                field32::GUEST_ES_LIMIT,
                field32::GUEST_ES_AR,
                natural::GUEST_ES_BASE,
            ),
            (
                field16::GUEST_FS_SELECTOR,
                field32::GUEST_FS_LIMIT,
                field32::GUEST_FS_AR,
                natural::GUEST_FS_BASE,
            ),
            (
                field16::GUEST_GS_SELECTOR,
                field32::GUEST_GS_LIMIT,
                field32::GUEST_GS_AR,
                natural::GUEST_GS_BASE,
            ),
        ];
        let segment = |w: &mut Writer, f: SegmentFields, sel: u16, limit: u32, ar: u32, base| {
            w.w(f.0, u64::from(sel));
            w.w(f.1, u64::from(limit));
            w.w(f.2, u64::from(ar));
            w.w(f.3, base);
        };
        let (cr0, cr3, cr4, efer, entry_controls, rip, rsp) = match *start {
            StartState::Long64 { entry, rsp, cr3 } => {
                segment(w, CS, 0x08, 0xFFFF_FFFF, ar::CODE64, 0);
                for f in [SS].into_iter().chain(DATA_SEGMENTS) {
                    segment(w, f, 0x10, 0xFFFF_FFFF, ar::DATA, 0);
                }
                (
                    apply_fixed(GUEST_CR0, c.cr0_fixed.0, c.cr0_fixed.1),
                    cr3,
                    GUEST_CR4,
                    GUEST_EFER,
                    c.entry,
                    entry,
                    rsp,
                )
            }
            StartState::Real16 {
                code_segment,
                ip,
                stack_segment,
                sp,
            } => {
                // Real mode (SDM vol. 3C 27.3.1.2 with "unrestricted guest" = 1): base =
                // selector * 16, limit 0xFFFF, 16-bit accessed code/data segments.
                let base = |sel: u16| u64::from(sel) << 4;
                segment(w, CS, code_segment, 0xFFFF, ar::CODE16, base(code_segment));
                segment(
                    w,
                    SS,
                    stack_segment,
                    0xFFFF,
                    ar::DATA16,
                    base(stack_segment),
                );
                for f in DATA_SEGMENTS {
                    segment(w, f, code_segment, 0xFFFF, ar::DATA16, base(code_segment));
                }
                (
                    real_mode_cr0(c.cr0_fixed.0, c.cr0_fixed.1),
                    0,
                    REAL_MODE_CR4,
                    0,
                    c.entry & !entry_ctl::IA32E_MODE_GUEST,
                    u64::from(ip),
                    u64::from(sp),
                )
            }
        };
        let cr4 = apply_fixed(cr4, c.cr4_fixed.0, c.cr4_fixed.1);
        w.w(field32::ENTRY_CONTROLS, u64::from(entry_controls));
        w.w(natural::GUEST_CR0, cr0);
        w.w(natural::CR0_READ_SHADOW, cr0);
        w.w(natural::GUEST_CR3, cr3);
        w.w(natural::GUEST_CR4, cr4);
        w.w(natural::CR4_READ_SHADOW, cr4 & !CR4_VMXE);
        if c.switches_efer() {
            w.w(field64::GUEST_EFER, efer);
        }
        w.w(field16::GUEST_LDTR_SELECTOR, 0);
        w.w(field32::GUEST_LDTR_LIMIT, 0);
        w.w(field32::GUEST_LDTR_AR, u64::from(ar::UNUSABLE));
        w.w(natural::GUEST_LDTR_BASE, 0);
        w.w(field16::GUEST_TR_SELECTOR, 0);
        w.w(field32::GUEST_TR_LIMIT, 0x67);
        w.w(field32::GUEST_TR_AR, u64::from(ar::TSS_BUSY));
        w.w(natural::GUEST_TR_BASE, 0);
        w.w(field32::GUEST_GDTR_LIMIT, 0);
        w.w(natural::GUEST_GDTR_BASE, 0);
        w.w(field32::GUEST_IDTR_LIMIT, 0);
        w.w(natural::GUEST_IDTR_BASE, 0);
        w.w(natural::GUEST_DR7, DR7_RESET);
        w.w(natural::GUEST_RSP, rsp);
        w.w(natural::GUEST_RIP, rip);
        w.w(natural::GUEST_RFLAGS, RFLAGS_RESET);
        w.w(natural::GUEST_PENDING_DEBUG, 0);
        w.w(field32::GUEST_INTERRUPTIBILITY, 0);
        w.w(field32::GUEST_ACTIVITY, 0);
        w.w(field32::GUEST_SYSENTER_CS, 0);
        w.w(natural::GUEST_SYSENTER_ESP, 0);
        w.w(natural::GUEST_SYSENTER_EIP, 0);
        w.w(field64::GUEST_DEBUGCTL, 0);
        if c.switches_pat() {
            w.w(field64::GUEST_PAT, PAT_RESET);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_mode_cr0_has_neither_pe_nor_pg() {
        let m = super::super::caps::tests::skylake();
        let cr0 = real_mode_cr0(m.cr0_fixed0, m.cr0_fixed1);
        assert_eq!(cr0 & CR0_PE_PG, 0);
        // NE (bit 5) stays: FIXED0 requires it.
        assert_eq!(cr0, REAL_MODE_CR0);
        assert_ne!(
            m.cr0_fixed0 & CR0_PE_PG,
            0,
            "the model requires PE/PG in FIXED0"
        );
    }

    #[test]
    fn guest_control_registers_meet_fixed_bits() {
        let m = super::super::caps::tests::skylake();
        let cr0 = apply_fixed(GUEST_CR0, m.cr0_fixed0, m.cr0_fixed1);
        let cr4 = apply_fixed(GUEST_CR4, m.cr4_fixed0, m.cr4_fixed1);
        assert_eq!(cr0, GUEST_CR0, "the guest CR0 already has PE, NE and PG");
        assert_eq!(cr4, GUEST_CR4 | CR4_VMXE);
    }
}
