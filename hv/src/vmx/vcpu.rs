//! The VMX vCPU: VMXON, VMCS set-up (the fields it writes: `vmcs.rs`), the world
//! switch, and exit collection.
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
use super::fields::{INTERRUPTIBILITY_STI_MOVSS, field32, field64, natural};
use super::host::{read_cr0, read_cr4};
use super::instr::{self, VmFail};
use super::probe::{host_phys_bits, read_msrs};
use super::vmcs::{CLONED_GUEST_FIELDS, GUEST_EFER, RFLAGS_RESET, Writer, read_current};
use super::world::vmx_world_switch;
use crate::hypervisor::VcpuHost;
use crate::platform::virt_to_phys;
use crate::switch::{self, SwitchState, Vendor};
use crate::vcpu::state::PAT_RESET;
use crate::vcpu::{ArchReg, CodeSegment, FlushRequest, Reg, StartState, Vcpu, VmExit};

/// VM-entry interruption information (SDM vol. 3C 25.8.3): type 3 = hardware
/// exception (bits 10:8), deliver error code (bit 11), valid (bit 31).
const ENTRY_INFO_EXCEPTION: u64 = 3 << 8;
const ENTRY_INFO_ERROR_CODE: u64 = 1 << 11;
const ENTRY_INFO_VALID: u64 = 1 << 31;

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

/// The per-CPU VMX state: the VMXON region, the chosen controls, the VPIDs.
pub struct VmxHost {
    pub(super) caps: VmxCaps,
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
}
