//! The VMX vCPU: VMXON, VMCS set-up, the world switch, and exit collection.
//!
//! VM entry and exit switch RSP, RIP, RFLAGS, the control registers, segments and
//! (with the EFER controls) EFER through the VMCS (SDM vol. 3C, chapters 27-28); every
//! other general-purpose register and the x87/SSE state are saved and restored by the
//! world switch (`world.rs`; host and guests use no AVX; XSETBV always exits, so XCR0
//! stays the host's); DR0-DR3, DR6, CR2, KERNEL_GS_BASE, the SYSCALL MSRs, TSC_AUX and
//! PKRU by `crate::switch::enter_guest`/`leave_guest`. MOV CR8 exits and is emulated
//! here (the guest's TPR never reaches the CPU's).
//!
//! Guests run one after another on one CPU, so each entry makes its vCPU's VMCS
//! current with VMPTRLD; RIP, RSP and RFLAGS are cached in the vCPU so that
//! [`Vcpu::reg`] works whichever VMCS is current.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::asm;

use ept::caps::Stage2Caps;
use x86_64::registers::model_specific::Msr;

use super::caps::{self, CR4_VMXE, InveptType, VmxCaps, VmxError, VmxMsrs, apply_fixed, msr};
use super::exit::{self, VMFAIL, reason};
use super::fields::{
    INTERRUPTIBILITY_STI_MOVSS, ar, entry_ctl, field16, field32, field64, natural,
};
use super::host::{host_segments, read_cr0, read_cr3, read_cr4};
use super::instr::{self, VmFail};
use super::probe::{host_phys_bits, rdmsr, read_msrs};
use super::world::{vmx_vm_exit, vmx_world_switch};
use crate::hypervisor::VcpuHost;
use crate::platform::virt_to_phys;
use crate::switch::{self, SwitchState, Vendor};
use crate::vcpu::state::PAT_RESET;
use crate::vcpu::{ArchReg, CodeSegment, FlushRequest, Reg, StartState, Vcpu, VmExit};

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
/// VM-entry interruption information (SDM vol. 3C 25.8.3): type 3 = hardware
/// exception (bits 10:8), deliver error code (bit 11), valid (bit 31).
const ENTRY_INFO_EXCEPTION: u64 = 3 << 8;
const ENTRY_INFO_ERROR_CODE: u64 = 1 << 11;
const ENTRY_INFO_VALID: u64 = 1 << 31;

/// Guest EFER: LME (bit 8), LMA (bit 10), NXE (bit 11) (SDM vol. 3A 2.2.1).
const GUEST_EFER: u64 = (1 << 8) | (1 << 10) | (1 << 11);
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
const RFLAGS_RESET: u64 = 0x202;
/// Most VPIDs handed out at once (VPID 0 is the host's).
const MAX_VPIDS: usize = 256;

/// A 4 KiB page for the VMXON region and VMCSs.
#[repr(C, align(4096))]
pub(super) struct Page([u8; 4096]);

impl Page {
    /// A zeroed region starting with the VMCS revision identifier (bit 31 clear)
    /// (SDM vol. 3C 25.2, 24.11.5).
    fn region(revision: u32) -> Box<Self> {
        let mut page = Box::new(Self([0; 4096]));
        page.0[..4].copy_from_slice(&(revision & 0x7FFF_FFFF).to_le_bytes());
        page
    }
}

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
const CLONED_GUEST_FIELDS: &[u32] = &[
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

/// The per-CPU VMX state: the VMXON region, the chosen controls, the VPIDs.
pub struct VmxHost {
    caps: VmxCaps,
    msrs: VmxMsrs,
    _vmxon: Box<Page>,
    vpid_used: Vec<bool>,
    /// vCPUs alive.
    live: usize,
}

impl VmxHost {
    /// Checks CPUID and the capability MSRs, sets the fixed CR0/CR4 bits (CR4.VMXE
    /// included), enables VMX in IA32_FEATURE_CONTROL if firmware left it unlocked, and
    /// executes VMXON (SDM vol. 3C 24.7-24.8).
    pub fn enable() -> Result<Self, VmxError> {
        if !super::cpu_has_vmx() {
            return Err(VmxError::NoVmx);
        }
        // Before CR4 is read below and copied into every VMCS (it may set CR4.PKE).
        switch::detect_host_features();
        let msrs = read_msrs();
        log::debug!("VMX capability MSRs: {msrs:#x?}");
        let caps = VmxCaps::from_msrs(&msrs, host_phys_bits())?;
        if msrs.feature_control & caps::FEATURE_CONTROL_LOCK == 0 {
            let value = msrs.feature_control
                | caps::FEATURE_CONTROL_LOCK
                | caps::FEATURE_CONTROL_VMX_OUTSIDE_SMX;
            // SAFETY: the MSR is unlocked; locking it with VMX allowed outside SMX only
            // permits VMXON (SDM vol. 3C 24.7).
            unsafe { Msr::new(msr::FEATURE_CONTROL).write(value) };
        }
        let cr0 = apply_fixed(read_cr0(), caps.cr0_fixed.0, caps.cr0_fixed.1);
        let cr4 = apply_fixed(read_cr4() | CR4_VMXE, caps.cr4_fixed.0, caps.cr4_fixed.1);
        // SAFETY: the fixed bits only force on what VMX operation requires (PE, NE, PG
        // and VMXE, all already compatible with the kernel's long mode) and clear bits
        // the CPU does not support.
        unsafe {
            asm!("mov cr0, {}", "mov cr4, {}", in(reg) cr0, in(reg) cr4,
                options(nostack, preserves_flags))
        };
        let vmxon = Page::region(caps.revision);
        // SAFETY: CR4.VMXE and the fixed bits are set; the region is a zeroed page with
        // the revision identifier, identity-mapped and owned by the host for good.
        unsafe { instr::vmxon(virt_to_phys(&*vmxon)) }.map_err(|_| VmxError::VmxonFailed)?;
        let mut vpid_used = alloc::vec![false; MAX_VPIDS];
        vpid_used[0] = true; // the host's
        Ok(Self {
            caps,
            msrs,
            _vmxon: vmxon,
            vpid_used,
            live: 0,
        })
    }

    /// The chosen controls and capabilities.
    pub fn caps(&self) -> &VmxCaps {
        &self.caps
    }

    /// The raw capability MSRs.
    pub fn msrs(&self) -> &VmxMsrs {
        &self.msrs
    }

    /// vCPUs that can still be created: free VPIDs (without VPIDs, the same number
    /// of slots bounds the live vCPUs).
    pub fn free_vpids(&self) -> usize {
        MAX_VPIDS - 1 - self.live
    }

    fn alloc_vpid(&mut self) -> Option<u16> {
        if self.live >= MAX_VPIDS - 1 {
            return None;
        }
        let vpid = if self.caps.vpid {
            let vpid = self.vpid_used.iter().position(|u| !*u)?;
            self.vpid_used[vpid] = true;
            vpid as u16
        } else {
            0
        };
        self.live += 1;
        Some(vpid)
    }

    fn free_vpid(&mut self, vpid: u16) {
        self.live = self.live.saturating_sub(1);
        if vpid != 0
            && let Some(used) = self.vpid_used.get_mut(usize::from(vpid))
        {
            *used = false;
        }
    }

    /// Makes `vmcs` clear and current.
    fn load_new(vmcs: &Page) -> Result<(), VmxError> {
        let pa = virt_to_phys(vmcs);
        let fail = |what| {
            move |e: VmFail| VmxError::InstructionFailed {
                what,
                error: e.error(),
            }
        };
        // SAFETY: VMX is on (VMXON succeeded in `enable`) and `vmcs` is a page-aligned
        // VMCS region with the revision identifier, owned by the vCPU being built.
        unsafe { instr::vmclear(pa) }.map_err(fail("VMCLEAR"))?;
        // SAFETY: as above.
        unsafe { instr::vmptrld(pa) }.map_err(fail("VMPTRLD"))
    }

    /// Writes the control and host state into the current VMCS.
    fn write_controls_and_host(&self, w: &mut Writer, vpid: u16, eptp: u64) {
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
    /// control (checked by [`VcpuHost::real_mode_support`]).
    fn write_guest(&self, w: &mut Writer, start: &StartState) {
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

    /// Builds a vCPU whose VMCS is current afterwards; `None` (logged) on failure.
    fn build(&mut self, start: &StartState, eptp: u64, flush: FlushRequest) -> Option<VmxVcpu> {
        let (rip, rsp) = match *start {
            StartState::Long64 { entry, rsp, .. } => (entry, rsp),
            StartState::Real16 { ip, sp, .. } => (u64::from(ip), u64::from(sp)),
        };
        let vpid = self.alloc_vpid()?;
        let vmcs = Page::region(self.caps.revision);
        let mut w = Writer { failed: None };
        let result = Self::load_new(&vmcs).and_then(|()| {
            self.write_controls_and_host(&mut w, vpid, eptp);
            self.write_guest(&mut w, start);
            w.finish()
        });
        if let Err(e) = result {
            log::error!("VMX vCPU set-up failed: {e}");
            self.free_vpid(vpid);
            return None;
        }
        let efer = match *start {
            StartState::Long64 { .. } => GUEST_EFER,
            StartState::Real16 { .. } => 0,
        };
        Some(VmxVcpu {
            vmcs,
            caps: self.caps,
            pat: PAT_RESET,
            efer,
            event: None,
            state: Box::new(SwitchState::new()),
            launched: false,
            fresh: true,
            vpid,
            eptp,
            invept: self.caps.invept,
            invvpid: self.caps.vpid && self.caps.invvpid_single,
            flush,
            rip,
            rsp,
            rflags: RFLAGS_RESET,
            next_len: None,
            clear_blocking: false,
            events: super::irq::Events::default(),
            last_exit: (0, 0, 0),
        })
    }

    /// Creates a vCPU in the state `start` on the EPT whose pointer is `eptp`. `None`
    /// when no VPID is free or the VMCS cannot be set up.
    pub fn create_vcpu(
        &mut self,
        start: &StartState,
        eptp: u64,
        flush: FlushRequest,
    ) -> Option<VmxVcpu> {
        self.build(start, eptp, flush)
    }

    /// A copy of `parent` (registers, FPU state, guest control and segment state) with
    /// its own VPID and VMCS on the EPT `eptp`. `None` when no VPID is free.
    pub fn fork_vcpu(
        &mut self,
        parent: &VmxVcpu,
        eptp: u64,
        flush: FlushRequest,
    ) -> Option<VmxVcpu> {
        // SAFETY: VMX is on and the parent's VMCS is a region of a live vCPU (it was
        // set up by `build`), so it may be made current to read its guest state.
        if let Err(e) = unsafe { instr::vmptrld(virt_to_phys(&*parent.vmcs)) } {
            log::error!("VMPTRLD of the parent VMCS failed: {e:?}");
            return None;
        }
        let mut fields = CLONED_GUEST_FIELDS.to_vec();
        if self.caps.switches_pat() {
            fields.push(field64::GUEST_PAT);
        }
        if self.caps.tsc_offsetting() {
            fields.push(field64::TSC_OFFSET);
        }
        let saved: Vec<(u32, u64)> = fields
            .iter()
            // SAFETY: the parent's VMCS is current and every field exists.
            .map(|&f| (f, unsafe { instr::vmread(f) }))
            .collect();
        let start = StartState::Long64 {
            entry: parent.rip,
            rsp: parent.rsp,
            cr3: 0,
        };
        let mut child = self.build(&start, eptp, flush)?;
        let mut w = Writer { failed: None };
        for (field, value) in saved {
            w.w(field, value);
        }
        if w.finish().is_err() {
            self.destroy_vcpu(child);
            return None;
        }
        child.rflags = parent.rflags;
        *child.state = SwitchState::fork(&parent.state);
        child.pat = parent.pat;
        child.efer = parent.efer;
        child.event = parent.event;
        child.next_len = parent.next_len;
        child.clear_blocking = parent.clear_blocking;
        child.events = parent.events;
        Some(child)
    }

    /// Ends `vcpu`: clears its VMCS (so the CPU holds nothing of it) and frees its
    /// VPID (the next user flushes it on its first entry).
    pub fn destroy_vcpu(&mut self, vcpu: VmxVcpu) {
        // SAFETY: VMX is on and the region is this vCPU's VMCS.
        if let Err(e) = unsafe { instr::vmclear(virt_to_phys(&*vcpu.vmcs)) } {
            log::error!("VMCLEAR at vCPU teardown failed: {e:?}");
        }
        self.free_vpid(vcpu.vpid);
    }

    /// One line describing VMX and the capabilities in use.
    pub fn description(&self) -> String {
        let c = &self.caps;
        let s = &c.stage2;
        format!(
            "Intel VMX with EPT: VPID {}, unrestricted guest {}, EPT 1G leaves {}, \
             EPT A/D {}, INVEPT {}, TRUE controls {}",
            yes(c.vpid),
            yes(c.unrestricted_guest),
            yes(s.leaf_1g),
            yes(s.accessed_dirty),
            match c.invept {
                InveptType::SingleContext => "single-context",
                InveptType::AllContext => "all-context",
            },
            yes(c.true_controls),
        )
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One VMX virtual CPU.
pub struct VmxVcpu {
    pub(super) vmcs: Box<Page>,
    pub(super) caps: VmxCaps,
    /// The guest's IA32_PAT where the controls do not switch it.
    pub(super) pat: u64,
    /// The guest's EFER where the controls do not switch it.
    pub(super) efer: u64,
    /// An exception to deliver at the next entry.
    pub(super) event: Option<(u8, Option<u32>)>,
    pub(super) state: Box<SwitchState>,
    pub(super) launched: bool,
    /// No entry yet: flush whatever the CPU may cache for this EPTP and VPID.
    pub(super) fresh: bool,
    pub(super) vpid: u16,
    pub(super) eptp: u64,
    pub(super) invept: InveptType,
    pub(super) invvpid: bool,
    pub(super) flush: FlushRequest,
    pub(super) rip: u64,
    pub(super) rsp: u64,
    pub(super) rflags: u64,
    /// Length of the instruction that caused the last exit, when it may be skipped.
    pub(super) next_len: Option<u64>,
    /// An instruction was skipped: clear blocking by STI/MOV SS before the next entry.
    pub(super) clear_blocking: bool,
    pub(super) last_exit: (u32, u64, u64),
    /// Interrupt injection state (see `irq`).
    pub(super) events: super::irq::Events,
}

impl VmxVcpu {
    /// This vCPU's VPID (0 when VPIDs are not in use).
    pub fn vpid(&self) -> u16 {
        self.vpid
    }

    /// Raw exit reason, qualification and guest-physical address of the last exit.
    pub fn last_exit_raw(&self) -> (u32, u64, u64) {
        self.last_exit
    }

    /// Invalidates the EPT (and, for a new vCPU, VPID) mappings this vCPU may use.
    fn invalidate(&self) -> Result<(), VmFail> {
        // SAFETY: VMX is on; the type was chosen from IA32_VMX_EPT_VPID_CAP.
        unsafe { instr::invept(self.invept as u64, self.eptp) }?;
        if self.fresh && self.invvpid && self.vpid != 0 {
            // SAFETY: single-context INVVPID is supported and the VPID is not 0.
            unsafe { instr::invvpid_single(self.vpid) }?;
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), VmFail> {
        // SAFETY: VMX is on and the region is this vCPU's VMCS, set up by `build`.
        unsafe { instr::vmptrld(virt_to_phys(&*self.vmcs)) }?;
        if self.flush.take() || self.fresh {
            self.invalidate()?;
            self.fresh = false;
        }
        let mut w = Writer { failed: None };
        w.w(natural::GUEST_RIP, self.rip);
        w.w(natural::GUEST_RSP, self.rsp);
        w.w(natural::GUEST_RFLAGS, self.rflags);
        if core::mem::take(&mut self.clear_blocking) {
            // SAFETY: this vCPU's VMCS is current.
            let state = unsafe { instr::vmread(field32::GUEST_INTERRUPTIBILITY) };
            w.w(
                field32::GUEST_INTERRUPTIBILITY,
                state & !u64::from(INTERRUPTIBILITY_STI_MOVSS),
            );
        }
        // An exception queued below wins over an interrupt event (which then waits:
        // `interrupt_ready` is false while an exception is queued).
        self.events.before_entry()?;
        if let Some((vector, code)) = self.event.take() {
            // No error code in real mode (CR0.PE = 0; SDM vol. 3C 27.2.1.3).
            let protected = read_current(natural::GUEST_CR0) & 1 != 0;
            let mut info = u64::from(vector) | ENTRY_INFO_EXCEPTION | ENTRY_INFO_VALID;
            if let (Some(code), true) = (code, protected) {
                info |= ENTRY_INFO_ERROR_CODE;
                w.w(field32::ENTRY_EXCEPTION_ERROR_CODE, u64::from(code));
            }
            w.w(field32::ENTRY_INTERRUPTION_INFO, info);
        }
        if let Some((_, e)) = w.failed {
            return Err(e);
        }
        switch::enter_guest(&self.state.soft, Vendor::Vmx);
        let state: *mut SwitchState = &mut *self.state;
        // SAFETY: the VMCS is current and holds valid host state whose HOST_RIP is
        // `vmx_vm_exit`; `state` is exclusively borrowed for the call; the routine
        // preserves the callee-saved registers and the host x87/SSE state, and returns
        // at the next VM exit or when the entry instruction fails.
        let failed = unsafe { vmx_world_switch(state, u64::from(self.launched)) };
        switch::leave_guest(&mut self.state.soft, Vendor::Vmx);
        if let Some(xcr0) = switch::xcr0_changed() {
            log::warn!("a guest set XCR0 to {xcr0:#x} past the XSETBV exit");
        }
        if failed != 0 {
            // SAFETY: the VMCS is still current after a VMfailValid.
            let error = unsafe { instr::vmread(field32::VM_INSTRUCTION_ERROR) } as u32;
            return Err(VmFail::Valid(error));
        }
        self.launched = true;
        Ok(())
    }
}

impl VmxVcpu {
    /// One entry and exit; `None` when the exit was a MOV CR8, completed here.
    fn run_once(&mut self) -> Option<VmExit> {
        self.next_len = None;
        if let Err(e) = self.enter() {
            let error = e.error();
            log::error!(
                "VM entry failed: VM-instruction error {error} ({})",
                exit::instruction_error_name(error)
            );
            return Some(VmExit::InvalidState {
                code: VMFAIL | u64::from(error),
            });
        }
        // After a VM exit this vCPU's VMCS is current.
        self.events.after_exit();
        let exit_reason = read_current(field32::EXIT_REASON) as u32;
        let qualification = read_current(natural::EXIT_QUALIFICATION);
        let len = read_current(field32::EXIT_INSTRUCTION_LEN);
        let basic = exit_reason as u16;
        let gpa = if matches!(basic, reason::EPT_VIOLATION | reason::EPT_MISCONFIG) {
            read_current(field64::GUEST_PHYSICAL_ADDRESS)
        } else {
            0
        };
        self.rip = read_current(natural::GUEST_RIP);
        self.rsp = read_current(natural::GUEST_RSP);
        self.rflags = read_current(natural::GUEST_RFLAGS);
        self.last_exit = (exit_reason, qualification, gpa);
        self.follow_long_mode();
        if exit_reason & exit::ENTRY_FAILURE == 0 && exit::has_instruction_length(basic) {
            self.next_len = Some(len);
        }
        if exit_reason & exit::ENTRY_FAILURE == 0
            && basic == reason::CR_ACCESS
            && self.emulate_cr8(qualification)
        {
            return None;
        }
        Some(exit::decode(exit_reason, qualification, gpa))
    }
}

impl Vcpu for VmxVcpu {
    fn run(&mut self) -> VmExit {
        // A MOV CR8 is completed inside the vCPU and the guest resumes at once.
        loop {
            if let Some(exit) = self.run_once() {
                return exit;
            }
        }
    }

    fn reg(&self, reg: Reg) -> u64 {
        match reg {
            Reg::Rsp => self.rsp,
            Reg::Rip => self.rip,
            Reg::Rflags => self.rflags,
            r => self.state.gprs[r as usize],
        }
    }

    fn set_reg(&mut self, reg: Reg, value: u64) {
        match reg {
            Reg::Rsp => self.rsp = value,
            Reg::Rip => self.rip = value,
            Reg::Rflags => self.rflags = value,
            r => self.state.gprs[r as usize] = value,
        }
    }

    fn skip_instruction(&mut self) {
        if let Some(len) = self.next_len.take() {
            self.rip = self.rip.wrapping_add(len);
            self.clear_blocking = true;
            self.events.clear_blocking();
        }
    }

    fn interrupt_ready(&self) -> bool {
        self.events.ready(self.rflags) && self.event.is_none()
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.events.inject(vector);
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.events.set_window(on);
    }

    fn instruction_length_known(&self) -> bool {
        self.next_len.is_some()
    }

    fn set_instruction_length(&mut self, len: u64) {
        self.next_len = Some(len);
    }

    fn code_segment(&self) -> CodeSegment {
        self.vmx_code_segment()
    }

    fn arch(&self, reg: ArchReg) -> u64 {
        self.vmx_arch(reg)
    }

    fn set_arch(&mut self, reg: ArchReg, value: u64) {
        self.vmx_set_arch(reg, value);
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.event = Some((vector, error_code));
        self.next_len = None;
    }
}

impl VcpuHost for VmxHost {
    type Vcpu = VmxVcpu;

    fn describe(&self) -> String {
        self.description()
    }

    fn stage2_caps(&self) -> Stage2Caps {
        self.caps.stage2
    }

    fn real_mode_support(&self) -> Result<(), &'static str> {
        if self.caps.unrestricted_guest {
            Ok(())
        } else {
            Err(
                "this VMX lacks the \"unrestricted guest\" control (SDM vol. 3C 25.6.2), \
                 without which VM entry refuses CR0.PE = 0 (27.3.1.1)",
            )
        }
    }

    fn create(&mut self, start: &StartState, root: u64, flush: FlushRequest) -> Option<VmxVcpu> {
        self.create_vcpu(start, root, flush)
    }

    fn fork(&mut self, parent: &VmxVcpu, root: u64, flush: FlushRequest) -> Option<VmxVcpu> {
        self.fork_vcpu(parent, root, flush)
    }

    fn destroy(&mut self, vcpu: VmxVcpu) {
        self.destroy_vcpu(vcpu);
    }

    fn free_slots(&self) -> usize {
        self.free_vpids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_regions_are_page_aligned() {
        // The SwitchState layout is checked in `crate::switch`.
        assert_eq!(core::mem::align_of::<Page>(), 4096);
    }

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
