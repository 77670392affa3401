//! The VMX vCPU's architectural state by [`ArchReg`]: the VMCS guest-state fields
//! (SDM vol. 3C 25.4) for what VM entry and exit switch, the world switch's soft state
//! for the rest (DR0-DR3, DR6, CR2, CR8, KERNEL_GS_BASE, the SYSCALL MSRs, TSC_AUX,
//! PKRU), and the emulation of MOV CR8, which exits (CR8-load/store exiting).

use super::caps::{CR4_VMXE, apply_fixed};
use super::fields::{entry_ctl, field32, field64, natural};
use super::instr;
use super::vcpu::VmxVcpu;
use super::vmcs::{Writer, read_current};
use crate::platform::virt_to_phys;
use crate::vcpu::{ArchReg, CodeSegment, Reg, Vcpu};

/// EFER.LME (bit 8) and EFER.LMA (bit 10) (SDM vol. 3A 2.2.1).
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);
/// EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// Control-register access qualification (SDM vol. 3C 28.2.1, table 28-3): CR number
/// (bits 3:0), access type (bits 5:4: 0 = MOV to CR, 1 = MOV from CR), GPR (11:8).
const CR_QUAL_NUMBER: u64 = 0xF;
const CR_QUAL_TYPE_SHIFT: u32 = 4;
const CR_QUAL_GPR_SHIFT: u32 = 8;
/// VMCS access-rights bits of CS: L (bit 13), D/B (bit 14) (SDM vol. 3C 25.4.1).
const AR_L: u64 = 1 << 13;
const AR_DB: u64 = 1 << 14;

impl VmxVcpu {
    /// Keeps the "IA-32e mode guest" entry control equal to the guest's EFER.LMA, as
    /// VM entry requires when it loads EFER (SDM vol. 3C 27.3.1.1): a guest that turns
    /// paging on with EFER.LME set (or off) switches long mode itself, without an exit,
    /// and the next entry must agree. Called with this vCPU's VMCS current, after an
    /// exit.
    pub(super) fn follow_long_mode(&mut self) {
        if !self.caps.switches_efer() {
            return;
        }
        let efer = read_current(field64::GUEST_EFER);
        self.efer = efer;
        let entry = read_current(field32::ENTRY_CONTROLS);
        let ia32e = u64::from(entry_ctl::IA32E_MODE_GUEST);
        let lma = efer & EFER_LMA != 0;
        if lma != (entry & ia32e != 0) {
            let mut w = Writer { failed: None };
            w.w(
                field32::ENTRY_CONTROLS,
                if lma { entry | ia32e } else { entry & !ia32e },
            );
            let _ = w.finish();
        }
    }

    /// Makes this vCPU's VMCS current, for reading and writing its fields.
    fn make_current(&self) -> bool {
        // SAFETY: VMX is on and the region is this vCPU's VMCS, set up by `build`.
        match unsafe { instr::vmptrld(virt_to_phys(&*self.vmcs)) } {
            Ok(()) => true,
            Err(e) => {
                log::error!("VMPTRLD failed: {e:?}");
                false
            }
        }
    }

    /// VMREAD of this vCPU's `field` (0 if the VMCS cannot be made current).
    fn field(&self, field: u32) -> u64 {
        if self.make_current() {
            read_current(field)
        } else {
            0
        }
    }

    /// VMWRITE of this vCPU's `field`.
    fn set_field(&self, field: u32, value: u64) {
        if self.make_current() {
            let mut w = Writer { failed: None };
            w.w(field, value);
            let _ = w.finish();
        }
    }

    /// Emulates MOV to or from CR8 (exit qualification `qualification`) against the
    /// guest's own TPR; `false` for any other control-register access.
    pub(super) fn emulate_cr8(&mut self, qualification: u64) -> bool {
        let access = (qualification >> CR_QUAL_TYPE_SHIFT) & 0b11;
        let gpr = Reg::gpr(((qualification >> CR_QUAL_GPR_SHIFT) & 0xF) as u8);
        let (8, 0 | 1, Some(gpr)) = (qualification & CR_QUAL_NUMBER, access, gpr) else {
            return false;
        };
        if access == 0 {
            self.state.soft.cr8 = self.reg(gpr) & 0xF;
        } else {
            self.set_reg(gpr, self.state.soft.cr8);
        }
        self.skip_instruction();
        true
    }

    /// The guest's code segment (for instruction fetches).
    pub(super) fn vmx_code_segment(&self) -> CodeSegment {
        let ar = self.field(field32::GUEST_CS_AR);
        CodeSegment {
            base: self.field(natural::GUEST_CS_BASE),
            long: self.arch(ArchReg::Efer) & EFER_LMA != 0 && ar & AR_L != 0,
            default32: ar & AR_DB != 0,
        }
    }

    /// Reads a piece of architectural state: VMCS guest fields, or the soft state.
    pub(super) fn vmx_arch(&self, reg: ArchReg) -> u64 {
        let soft = &self.state.soft;
        match reg {
            // The guest owns every CR0 bit (CR0 guest/host mask 0): GUEST_CR0 is what it
            // sees.
            ArchReg::Cr0 => self.field(natural::GUEST_CR0),
            ArchReg::Cr2 => soft.cr2,
            ArchReg::Cr3 => self.field(natural::GUEST_CR3),
            // CR4.VMXE is the host's; the guest sees its read shadow (0).
            ArchReg::Cr4 => self.field(natural::GUEST_CR4) & !CR4_VMXE,
            ArchReg::Cr8 => soft.cr8,
            ArchReg::Dr0 | ArchReg::Dr1 | ArchReg::Dr2 | ArchReg::Dr3 => {
                soft.dr[reg as usize - ArchReg::Dr0 as usize]
            }
            ArchReg::Dr6 => soft.dr6,
            ArchReg::Dr7 => self.field(natural::GUEST_DR7),
            ArchReg::Efer if self.caps.switches_efer() => self.field(field64::GUEST_EFER),
            ArchReg::Efer => self.efer,
            ArchReg::Pat if self.caps.switches_pat() => self.field(field64::GUEST_PAT),
            ArchReg::Pat => self.pat,
            ArchReg::FsBase => self.field(natural::GUEST_FS_BASE),
            ArchReg::GsBase => self.field(natural::GUEST_GS_BASE),
            ArchReg::KernelGsBase => soft.kernel_gs_base,
            ArchReg::Star => soft.syscall[0],
            ArchReg::Lstar => soft.syscall[1],
            ArchReg::Cstar => soft.syscall[2],
            ArchReg::Sfmask => soft.syscall[3],
            ArchReg::SysenterCs => self.field(field32::GUEST_SYSENTER_CS),
            ArchReg::SysenterEsp => self.field(natural::GUEST_SYSENTER_ESP),
            ArchReg::SysenterEip => self.field(natural::GUEST_SYSENTER_EIP),
            ArchReg::TscAux => soft.tsc_aux,
            ArchReg::Pkru => soft.pkru,
            ArchReg::TscOffset if self.caps.tsc_offsetting() => self.field(field64::TSC_OFFSET),
            ArchReg::TscOffset => 0,
        }
    }

    /// Writes a piece of architectural state.
    pub(super) fn vmx_set_arch(&mut self, reg: ArchReg, value: u64) {
        let soft = &mut self.state.soft;
        match reg {
            ArchReg::Cr0 => {
                self.set_field(natural::GUEST_CR0, value);
                self.set_field(natural::CR0_READ_SHADOW, value);
            }
            ArchReg::Cr2 => soft.cr2 = value,
            ArchReg::Cr3 => self.set_field(natural::GUEST_CR3, value),
            ArchReg::Cr4 => {
                let (fixed0, fixed1) = self.caps.cr4_fixed;
                self.set_field(natural::GUEST_CR4, apply_fixed(value, fixed0, fixed1));
                self.set_field(natural::CR4_READ_SHADOW, value & !CR4_VMXE);
            }
            ArchReg::Cr8 => soft.cr8 = value & 0xF,
            ArchReg::Dr0 | ArchReg::Dr1 | ArchReg::Dr2 | ArchReg::Dr3 => {
                soft.dr[reg as usize - ArchReg::Dr0 as usize] = value;
            }
            ArchReg::Dr6 => soft.dr6 = value,
            ArchReg::Dr7 => self.set_field(natural::GUEST_DR7, value),
            ArchReg::Efer => {
                self.efer = value;
                if self.caps.switches_efer() {
                    self.set_field(field64::GUEST_EFER, value);
                }
                // IA-32e mode guest follows EFER.LMA (SDM vol. 3C 27.3.1.1).
                let entry = self.field(field32::ENTRY_CONTROLS);
                let ia32e = u64::from(entry_ctl::IA32E_MODE_GUEST);
                let lma = value & EFER_LME_LMA == EFER_LME_LMA;
                self.set_field(
                    field32::ENTRY_CONTROLS,
                    if lma { entry | ia32e } else { entry & !ia32e },
                );
            }
            ArchReg::Pat => {
                self.pat = value;
                if self.caps.switches_pat() {
                    self.set_field(field64::GUEST_PAT, value);
                }
            }
            ArchReg::FsBase => self.set_field(natural::GUEST_FS_BASE, value),
            ArchReg::GsBase => self.set_field(natural::GUEST_GS_BASE, value),
            ArchReg::KernelGsBase => soft.kernel_gs_base = value,
            ArchReg::Star => soft.syscall[0] = value,
            ArchReg::Lstar => soft.syscall[1] = value,
            ArchReg::Cstar => soft.syscall[2] = value,
            ArchReg::Sfmask => soft.syscall[3] = value,
            ArchReg::SysenterCs => self.set_field(field32::GUEST_SYSENTER_CS, value),
            ArchReg::SysenterEsp => self.set_field(natural::GUEST_SYSENTER_ESP, value),
            ArchReg::SysenterEip => self.set_field(natural::GUEST_SYSENTER_EIP, value),
            ArchReg::TscAux => soft.tsc_aux = value,
            ArchReg::Pkru => soft.pkru = value,
            ArchReg::TscOffset => {
                if self.caps.tsc_offsetting() {
                    self.set_field(field64::TSC_OFFSET, value);
                }
            }
        }
    }
}
