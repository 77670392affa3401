//! The SVM vCPU: VMCB set-up, the world switch, and exit collection.
//!
//! VMRUN and #VMEXIT switch only RAX, RSP, RIP, RFLAGS and the VMCB's segment and
//! control state (APM vol. 2, 15.5-15.6). The world switch therefore also saves and
//! restores the other general-purpose registers, the FS/GS/TR/LDTR/syscall state
//! (VMSAVE/VMLOAD, APM 15.5.2) and the x87/SSE state (FXSAVE/FXRSTOR; host and guests
//! use no AVX, so XCR0 stays at x87|SSE and is not switched: XSETBV is intercepted),
//! plus DR0-DR3, PKRU and TSC_AUX in software (`crate::switch::enter_guest`).

use alloc::boxed::Box;
use alloc::vec::Vec;

use x86_64::registers::model_specific::Msr;

use super::exit::{self, code};
use super::vmcb::{
    V_INTR_MASKING, Vmcb, attr, control, intercept3, intercept4, intercept5, save, tlb_control,
};
use super::{SvmCaps, SvmError};
use crate::platform::virt_to_phys;
use crate::switch::{
    self, GPRS, GUEST_FX, HOST_FX, SwitchState, Vendor, load_guest_gprs, store_guest_gprs,
};
use crate::vcpu::state::{DR6_RESET, DR7_RESET, PAT_RESET};
use crate::vcpu::{ArchReg, CodeSegment, FlushRequest, Reg, StartState, Vcpu, VmExit};

/// EFER MSR (APM vol. 2, 3.1.7); bit 12 = SVME.
const MSR_EFER: u32 = 0xC000_0080;
pub(super) const EFER_SVME: u64 = 1 << 12;
/// VM_CR MSR (APM vol. 2, 15.30.1); bit 4 = SVMDIS.
const MSR_VM_CR: u32 = 0xC001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
/// VM_HSAVE_PA MSR (APM vol. 2, 15.30.4): where VMRUN saves host state.
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
/// The PAT MSR (APM vol. 2, 7.8.1); nested page entries index the host's PAT.
const MSR_PAT: u32 = 0x277;

/// Guest EFER: LME (bit 8), LMA (bit 10), NXE (bit 11), SVME (bit 12; must be set in
/// a guest, APM 15.5.1).
const GUEST_EFER: u64 = (1 << 8) | (1 << 10) | (1 << 11) | EFER_SVME;
/// Guest CR0: PE (0), MP (1), ET (4), NE (5), WP (16), PG (31) (Intel SDM vol. 3 2.5).
const GUEST_CR0: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
/// Guest CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10).
const GUEST_CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10);
/// Real-mode guest CR0: MP (1), ET (4), NE (5); PE (0) and PG (31) clear (Intel SDM
/// vol. 3 2.5; AMD APM vol. 2 3.1.1).
const REAL_MODE_CR0: u64 = (1 << 1) | (1 << 4) | (1 << 5);
/// Real-mode guest CR4: OSFXSR (9), OSXMMEXCPT (10), so SSE works as in long mode.
const REAL_MODE_CR4: u64 = (1 << 9) | (1 << 10);
/// EVENTINJ (APM vol. 2 15.20): type 3 = exception, EV = bit 11, V = bit 31.
const EVENTINJ_EXCEPTION: u64 = 3 << 8;
const EVENTINJ_EV: u64 = 1 << 11;
const EVENTINJ_VALID: u64 = 1 << 31;

core::arch::global_asm!(
    ".section .text.svm_world_switch, \"ax\"",
    ".global svm_world_switch",
    // rdi = &mut SwitchState, rsi = guest VMCB PA, rdx = host save-area PA.
    "svm_world_switch:",
    "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
    "push rdi",
    "push rdx",
    "clgi",
    // IF = 1 while GIF = 0: the timer interrupt waits for VMRUN, and then (with
    // V_INTR_MASKING and the INTR intercept) ends the guest's slice with a #VMEXIT.
    "sti",
    "fxsave [rdi + {host_fx}]",
    "fxrstor [rdi + {guest_fx}]",
    "mov rax, rdx",
    "vmsave rax",
    "mov rax, rsi",
    "vmload rax",
    load_guest_gprs!(),
    "mov rdi, [rdi + {gprs} + 7*8]",
    "vmrun rax",
    // #VMEXIT: RAX holds the guest VMCB PA again (host RAX), RSP the host stack.
    "push rdi",
    "mov rdi, [rsp + 16]",
    store_guest_gprs!(),
    "pop rbx",
    "mov [rdi + {gprs} + 7*8], rbx",
    "vmsave rax",
    "pop rax",
    "vmload rax",
    "fxsave [rdi + {guest_fx}]",
    "fxrstor [rdi + {host_fx}]",
    // A pending timer interrupt is taken here, by the host's handler, then IF = 0 again.
    "stgi",
    "cli",
    "add rsp, 8",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "ret",
    gprs = const GPRS,
    guest_fx = const GUEST_FX,
    host_fx = const HOST_FX,
);

unsafe extern "C" {
    /// Runs the guest of `vmcb_pa` until the next #VMEXIT.
    fn svm_world_switch(state: *mut SwitchState, vmcb_pa: u64, host_save_pa: u64);
}

/// A 12 KiB I/O permission map (APM vol. 2, 15.10.1): all ones, every port intercepted.
#[repr(C, align(4096))]
struct IoPermissionMap([u8; 3 * 4096]);

/// An 8 KiB MSR permission map (APM vol. 2, 15.11): all ones, every MSR intercepted.
#[repr(C, align(4096))]
struct MsrPermissionMap([u8; 2 * 4096]);

/// The per-CPU SVM state: SVM enabled, host save areas, permission maps, ASIDs.
pub struct SvmHost {
    caps: SvmCaps,
    _hsave: Box<Vmcb>,
    host_vmcb: Box<Vmcb>,
    iopm: Box<IoPermissionMap>,
    msrpm: Box<MsrPermissionMap>,
    asid_used: Vec<bool>,
}

/// Reads CPUID `leaf`.
fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, 0)
}

impl SvmHost {
    /// Checks CPUID, enables SVM (EFER.SVME) and sets up the host save areas.
    pub fn enable() -> Result<Self, SvmError> {
        let max_ext = cpuid(0x8000_0000).eax;
        if max_ext < 0x8000_0001 {
            return Err(SvmError::NoSvm);
        }
        let ext = cpuid(0x8000_0001);
        let svm_leaf = (max_ext >= 0x8000_000A).then(|| {
            let l = cpuid(0x8000_000A);
            (l.ebx, l.edx)
        });
        let caps = SvmCaps::from_cpuid(ext.ecx, ext.edx, svm_leaf)?;
        switch::detect_host_features();
        // SAFETY: VM_CR exists on every CPU that reports SVM (APM 15.30.1).
        let vm_cr = unsafe { Msr::new(MSR_VM_CR).read() };
        if vm_cr & VM_CR_SVMDIS != 0 {
            return Err(SvmError::Disabled);
        }
        // SAFETY: reading EFER has no side effects.
        let efer = unsafe { Msr::new(MSR_EFER).read() };
        // SAFETY: setting SVME only enables the SVM instructions.
        unsafe { Msr::new(MSR_EFER).write(efer | EFER_SVME) };
        // Nested leaves select their memory type through the host PAT (APM 15.25.8):
        // load the layout the NPT encoding assumes. Entries 0-3 keep their power-on
        // values, which are the only ones the host's own page tables use.
        // SAFETY: only PAT entries 4 and 5 change, and no host mapping uses them.
        unsafe { Msr::new(MSR_PAT).write(ept::format::NPT_HOST_PAT) };
        let hsave = Box::new(Vmcb::default());
        // SAFETY: the page is 4 KiB aligned, owned by this struct for as long as SVM
        // runs guests (the host is never torn down), and identity-mapped.
        unsafe { Msr::new(MSR_VM_HSAVE_PA).write(virt_to_phys(&*hsave)) };
        let mut asid_used = alloc::vec![false; caps.asids as usize];
        asid_used[0] = true; // the host's
        Ok(Self {
            caps,
            _hsave: hsave,
            host_vmcb: Box::new(Vmcb::default()),
            iopm: Box::new(IoPermissionMap([0xFF; 3 * 4096])),
            msrpm: Box::new(MsrPermissionMap([0xFF; 2 * 4096])),
            asid_used,
        })
    }

    /// The detected capabilities.
    pub fn caps(&self) -> SvmCaps {
        self.caps
    }

    /// ASIDs currently free.
    pub fn free_asids(&self) -> usize {
        self.asid_used.iter().filter(|u| !**u).count()
    }

    fn alloc_asid(&mut self) -> Option<u32> {
        let asid = self.asid_used.iter().position(|u| !*u)?;
        self.asid_used[asid] = true;
        Some(asid as u32)
    }

    /// Creates a vCPU in the state `start` (64-bit long mode or 16-bit real mode), using
    /// nested page tables rooted at `ncr3`. `None` when no ASID is free.
    pub fn create_vcpu(
        &mut self,
        start: &StartState,
        ncr3: u64,
        flush: FlushRequest,
    ) -> Option<SvmVcpu> {
        let asid = self.alloc_asid()?;
        let mut vmcb = Box::new(Vmcb::default());
        let v = &mut *vmcb;
        v.write_u32(control::INTERCEPT_EXCEPTIONS, 0);
        v.write_u32(
            control::INTERCEPT_VEC3,
            intercept3::INTR
                | intercept3::NMI
                | intercept3::INIT
                | intercept3::RDPMC
                | intercept3::CPUID
                | intercept3::RSM
                | intercept3::INVD
                | intercept3::HLT
                | intercept3::INVLPGA
                | intercept3::IOIO_PROT
                | intercept3::MSR_PROT
                | intercept3::TASK_SWITCH
                | intercept3::SHUTDOWN,
        );
        v.write_u32(
            control::INTERCEPT_VEC4,
            intercept4::VMRUN
                | intercept4::VMMCALL
                | intercept4::VMLOAD
                | intercept4::VMSAVE
                | intercept4::STGI
                | intercept4::CLGI
                | intercept4::SKINIT
                | intercept4::WBINVD
                | intercept4::MONITOR
                | intercept4::MWAIT
                | intercept4::XSETBV
                | intercept4::RDPRU,
        );
        v.write_u32(
            control::INTERCEPT_VEC5,
            intercept5::INVLPGB | intercept5::INVLPGB_ILLEGAL | intercept5::TLBSYNC,
        );
        v.write_u64(control::IOPM_BASE_PA, virt_to_phys(&*self.iopm));
        v.write_u64(control::MSRPM_BASE_PA, virt_to_phys(&*self.msrpm));
        v.write_u32(control::GUEST_ASID, asid);
        v.write_u64(control::NP_ENABLE, 1);
        v.write_u64(control::V_INTR, V_INTR_MASKING);
        v.write_u64(control::N_CR3, ncr3);
        let (rip, rsp) = match *start {
            StartState::Long64 { entry, rsp, cr3 } => {
                v.set_segment(save::CS, 0x08, attr::CODE64, 0xFFFF_FFFF, 0);
                for seg in [save::DS, save::ES, save::SS, save::FS, save::GS] {
                    v.set_segment(seg, 0x10, attr::DATA, 0xFFFF_FFFF, 0);
                }
                v.write_u64(save::EFER, GUEST_EFER);
                v.write_u64(save::CR0, GUEST_CR0);
                v.write_u64(save::CR3, cr3);
                v.write_u64(save::CR4, GUEST_CR4);
                (entry, rsp)
            }
            StartState::Real16 {
                code_segment,
                ip,
                stack_segment,
                sp,
            } => {
                // Real mode: base = selector * 16, limit 64 KiB, 16-bit segments
                // (APM vol. 2, 15.5.1 lists no real-mode restriction on VMRUN; the
                // segment state follows the reset state of APM vol. 2, 14.1.3).
                let base = |sel: u16| u64::from(sel) << 4;
                v.set_segment(
                    save::CS,
                    code_segment,
                    attr::CODE16,
                    0xFFFF,
                    base(code_segment),
                );
                for seg in [save::DS, save::ES, save::FS, save::GS] {
                    v.set_segment(seg, code_segment, attr::DATA16, 0xFFFF, base(code_segment));
                }
                v.set_segment(
                    save::SS,
                    stack_segment,
                    attr::DATA16,
                    0xFFFF,
                    base(stack_segment),
                );
                v.write_u64(save::EFER, EFER_SVME);
                v.write_u64(save::CR0, REAL_MODE_CR0);
                v.write_u64(save::CR3, 0);
                v.write_u64(save::CR4, REAL_MODE_CR4);
                (u64::from(ip), u64::from(sp))
            }
        };
        v.set_segment(save::GDTR, 0, 0, 0, 0);
        v.set_segment(save::IDTR, 0, 0, 0, 0);
        v.set_segment(save::LDTR, 0, attr::LDT, 0, 0);
        v.set_segment(save::TR, 0, attr::TSS_BUSY, 0x67, 0);
        v.write_u8(save::CPL, 0);
        v.write_u64(save::DR6, DR6_RESET);
        v.write_u64(save::DR7, DR7_RESET);
        v.write_u64(save::RFLAGS, 0x2);
        v.write_u64(save::RIP, rip);
        v.write_u64(save::RSP, rsp);
        v.write_u64(save::G_PAT, PAT_RESET);
        Some(SvmVcpu {
            vmcb,
            state: Box::new(SwitchState::new()),
            host_save_pa: virt_to_phys(&*self.host_vmcb),
            nrips: self.caps.nrips,
            next_rip: None,
            flush,
            fresh_asid: true,
            asid,
        })
    }

    /// A copy of `parent` (registers, FPU state, control state) with its own ASID and
    /// nested page tables rooted at `ncr3`. `None` when no ASID is free.
    pub fn fork_vcpu(
        &mut self,
        parent: &SvmVcpu,
        ncr3: u64,
        flush: FlushRequest,
    ) -> Option<SvmVcpu> {
        let asid = self.alloc_asid()?;
        let mut vmcb = Box::new(Vmcb(parent.vmcb.0));
        vmcb.write_u32(control::GUEST_ASID, asid);
        vmcb.write_u64(control::N_CR3, ncr3);
        Some(SvmVcpu {
            vmcb,
            state: Box::new(SwitchState::fork(&parent.state)),
            host_save_pa: parent.host_save_pa,
            nrips: parent.nrips,
            next_rip: parent.next_rip,
            flush,
            fresh_asid: true,
            asid,
        })
    }

    /// Ends `vcpu` and frees its ASID (the next user flushes it on first entry).
    pub fn destroy_vcpu(&mut self, vcpu: SvmVcpu) {
        if let Some(used) = self.asid_used.get_mut(vcpu.asid as usize) {
            *used = false;
        }
    }
}

/// One SVM virtual CPU.
pub struct SvmVcpu {
    pub(super) vmcb: Box<Vmcb>,
    pub(super) state: Box<SwitchState>,
    host_save_pa: u64,
    nrips: bool,
    next_rip: Option<u64>,
    flush: FlushRequest,
    fresh_asid: bool,
    asid: u32,
}

impl SvmVcpu {
    /// This vCPU's ASID.
    pub fn asid(&self) -> u32 {
        self.asid
    }

    /// Raw exit code and EXITINFO1/2 of the last exit (for diagnostics).
    pub fn last_exit_raw(&self) -> (u64, u64, u64) {
        (
            self.vmcb.read_u64(control::EXIT_CODE),
            self.vmcb.read_u64(control::EXIT_INFO1),
            self.vmcb.read_u64(control::EXIT_INFO2),
        )
    }
}

impl Vcpu for SvmVcpu {
    fn run(&mut self) -> VmExit {
        let flush = self.flush.take() || core::mem::take(&mut self.fresh_asid);
        self.vmcb.write_u8(
            control::TLB_CONTROL,
            if flush {
                tlb_control::THIS_ASID
            } else {
                tlb_control::NOTHING
            },
        );
        self.vmcb.write_u32(control::CLEAN_BITS, 0);
        let vmcb_pa = virt_to_phys(&*self.vmcb);
        switch::enter_guest(&self.state.soft, Vendor::Svm);
        let state: *mut SwitchState = &mut *self.state;
        // SAFETY: the VMCB is a valid, 4 KiB-aligned, identity-mapped page set up by
        // `create_vcpu`; SVM is enabled with a host save area; `state` is exclusively
        // borrowed for the call; the routine preserves every callee-saved register and
        // the host x87/SSE state, and returns on the next #VMEXIT.
        unsafe { svm_world_switch(state, vmcb_pa, self.host_save_pa) };
        switch::leave_guest(&mut self.state.soft, Vendor::Svm);
        if let Some(xcr0) = switch::xcr0_changed() {
            log::warn!("a guest set XCR0 to {xcr0:#x} past the XSETBV intercept");
            return VmExit::Forbidden {
                what: "XSETBV (executed although intercepted; XCR0 restored)",
            };
        }
        // An injected event was delivered (or is now in EXITINTINFO).
        self.vmcb.write_u64(control::EVENT_INJ, 0);
        let (exit_code, info1, info2) = self.last_exit_raw();
        let nrip = self.vmcb.read_u64(control::NEXT_RIP);
        // Without NRIPS the exit handler decodes the instruction from guest memory
        // (`crate::cpu::decode`) and sets the length.
        self.next_rip = if exit_code == code::IOIO {
            Some(info2)
        } else if self.nrips && nrip != 0 {
            Some(nrip)
        } else {
            None
        };
        exit::decode(exit_code, info1, info2)
    }

    fn reg(&self, reg: Reg) -> u64 {
        match reg {
            Reg::Rax => self.vmcb.read_u64(save::RAX),
            Reg::Rsp => self.vmcb.read_u64(save::RSP),
            Reg::Rip => self.vmcb.read_u64(save::RIP),
            Reg::Rflags => self.vmcb.read_u64(save::RFLAGS),
            r => self.state.gprs[r as usize],
        }
    }

    fn set_reg(&mut self, reg: Reg, value: u64) {
        match reg {
            Reg::Rax => self.vmcb.write_u64(save::RAX, value),
            Reg::Rsp => self.vmcb.write_u64(save::RSP, value),
            Reg::Rip => self.vmcb.write_u64(save::RIP, value),
            Reg::Rflags => self.vmcb.write_u64(save::RFLAGS, value),
            r => self.state.gprs[r as usize] = value,
        }
    }

    fn skip_instruction(&mut self) {
        if let Some(next) = self.next_rip.take() {
            self.vmcb.write_u64(save::RIP, next);
        }
    }

    fn instruction_length_known(&self) -> bool {
        self.next_rip.is_some()
    }

    fn set_instruction_length(&mut self, len: u64) {
        self.next_rip = Some(self.vmcb.read_u64(save::RIP).wrapping_add(len));
    }

    fn code_segment(&self) -> CodeSegment {
        self.svm_code_segment()
    }

    fn arch(&self, reg: ArchReg) -> u64 {
        self.svm_arch(reg)
    }

    fn set_arch(&mut self, reg: ArchReg, value: u64) {
        self.svm_set_arch(reg, value);
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        // No error code is pushed in real mode (CR0.PE = 0; APM vol. 2 8.2).
        let protected = self.vmcb.read_u64(save::CR0) & 1 != 0;
        let mut event = u64::from(vector) | EVENTINJ_EXCEPTION | EVENTINJ_VALID;
        if let (Some(code), true) = (error_code, protected) {
            event |= EVENTINJ_EV | (u64::from(code) << 32);
        }
        self.vmcb.write_u64(control::EVENT_INJ, event);
        self.next_rip = None;
    }
}
