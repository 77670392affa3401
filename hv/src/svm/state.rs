//! The SVM vCPU's architectural state by [`ArchReg`]: the VMCB's state-save and
//! control areas (APM vol. 2 appendix B; the VMLOAD/VMSAVE part holds the SYSCALL and
//! SYSENTER MSRs and KERNEL_GS_BASE, 15.5.2), and the world switch's soft state for
//! DR0-DR3, TSC_AUX and PKRU.

use super::vcpu::{EFER_SVME, SvmVcpu};
use super::vmcb::{control, save};
use crate::vcpu::{ArchReg, CodeSegment};

/// V_TPR, bits 3:0 of the VMCB's V_INTR field (APM vol. 2 15.21.1).
const V_TPR_MASK: u64 = 0xF;
/// CS attribute bits in the VMCB form: L (bit 9) and D/B (bit 10) (APM vol. 2 15.5.1).
const ATTR_L: u16 = 1 << 9;
const ATTR_DB: u16 = 1 << 10;
/// EFER.LMA (APM vol. 2 3.1.7).
const EFER_LMA: u64 = 1 << 10;

impl SvmVcpu {
    /// The guest's code segment (for instruction fetches).
    pub(super) fn svm_code_segment(&self) -> CodeSegment {
        let attr = u16::from_le_bytes([
            self.vmcb.read_u8(save::CS + 2),
            self.vmcb.read_u8(save::CS + 3),
        ]);
        let lma = self.vmcb.read_u64(save::EFER) & EFER_LMA != 0;
        CodeSegment {
            base: self.vmcb.read_u64(save::CS + 8),
            long: lma && attr & ATTR_L != 0,
            default32: attr & ATTR_DB != 0,
        }
    }

    /// Reads a piece of architectural state: the VMCB, or the soft state.
    pub(super) fn svm_arch(&self, reg: ArchReg) -> u64 {
        let v = &self.vmcb;
        let soft = &self.state.soft;
        match reg {
            ArchReg::Cr0 => v.read_u64(save::CR0),
            ArchReg::Cr2 => v.read_u64(save::CR2),
            ArchReg::Cr3 => v.read_u64(save::CR3),
            ArchReg::Cr4 => v.read_u64(save::CR4),
            ArchReg::Cr8 => v.read_u64(control::V_INTR) & V_TPR_MASK,
            ArchReg::Dr0 | ArchReg::Dr1 | ArchReg::Dr2 | ArchReg::Dr3 => {
                soft.dr[reg as usize - ArchReg::Dr0 as usize]
            }
            ArchReg::Dr6 => v.read_u64(save::DR6),
            ArchReg::Dr7 => v.read_u64(save::DR7),
            // SVME is the hypervisor's (required in a guest, APM 15.5.1), not the guest's.
            ArchReg::Efer => v.read_u64(save::EFER) & !EFER_SVME,
            ArchReg::Pat => v.read_u64(save::G_PAT),
            ArchReg::FsBase => v.read_u64(save::FS + 8),
            ArchReg::GsBase => v.read_u64(save::GS + 8),
            ArchReg::KernelGsBase => v.read_u64(save::KERNEL_GS_BASE),
            ArchReg::Star => v.read_u64(save::STAR),
            ArchReg::Lstar => v.read_u64(save::LSTAR),
            ArchReg::Cstar => v.read_u64(save::CSTAR),
            ArchReg::Sfmask => v.read_u64(save::SFMASK),
            ArchReg::SysenterCs => v.read_u64(save::SYSENTER_CS),
            ArchReg::SysenterEsp => v.read_u64(save::SYSENTER_ESP),
            ArchReg::SysenterEip => v.read_u64(save::SYSENTER_EIP),
            ArchReg::TscAux => soft.tsc_aux,
            ArchReg::Pkru => soft.pkru,
            ArchReg::TscOffset => v.read_u64(control::TSC_OFFSET),
        }
    }

    /// Writes a piece of architectural state.
    pub(super) fn svm_set_arch(&mut self, reg: ArchReg, value: u64) {
        let v = &mut self.vmcb;
        let soft = &mut self.state.soft;
        match reg {
            ArchReg::Cr0 => v.write_u64(save::CR0, value),
            ArchReg::Cr2 => v.write_u64(save::CR2, value),
            ArchReg::Cr3 => v.write_u64(save::CR3, value),
            ArchReg::Cr4 => v.write_u64(save::CR4, value),
            ArchReg::Cr8 => {
                let old = v.read_u64(control::V_INTR);
                v.write_u64(control::V_INTR, (old & !V_TPR_MASK) | (value & V_TPR_MASK));
            }
            ArchReg::Dr0 | ArchReg::Dr1 | ArchReg::Dr2 | ArchReg::Dr3 => {
                soft.dr[reg as usize - ArchReg::Dr0 as usize] = value;
            }
            ArchReg::Dr6 => v.write_u64(save::DR6, value),
            ArchReg::Dr7 => v.write_u64(save::DR7, value),
            ArchReg::Efer => v.write_u64(save::EFER, value | EFER_SVME),
            ArchReg::Pat => v.write_u64(save::G_PAT, value),
            ArchReg::FsBase => v.write_u64(save::FS + 8, value),
            ArchReg::GsBase => v.write_u64(save::GS + 8, value),
            ArchReg::KernelGsBase => v.write_u64(save::KERNEL_GS_BASE, value),
            ArchReg::Star => v.write_u64(save::STAR, value),
            ArchReg::Lstar => v.write_u64(save::LSTAR, value),
            ArchReg::Cstar => v.write_u64(save::CSTAR, value),
            ArchReg::Sfmask => v.write_u64(save::SFMASK, value),
            ArchReg::SysenterCs => v.write_u64(save::SYSENTER_CS, value),
            ArchReg::SysenterEsp => v.write_u64(save::SYSENTER_ESP, value),
            ArchReg::SysenterEip => v.write_u64(save::SYSENTER_EIP, value),
            ArchReg::TscAux => soft.tsc_aux = value,
            ArchReg::Pkru => soft.pkru = value,
            ArchReg::TscOffset => v.write_u64(control::TSC_OFFSET, value),
        }
    }
}
