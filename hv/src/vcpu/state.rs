//! The per-vCPU architectural state a guest can write, in one vendor-neutral shape.
//!
//! Each vendor keeps most of this state in its own structure (the VMCB, APM vol. 2
//! appendix B; the VMCS guest-state area, SDM vol. 3C 25.4) and the rest in the world
//! switch's software part (`crate::switch::SoftRegs`: debug registers, and on VMX CR2,
//! KERNEL_GS_BASE and the SYSCALL MSRs, which VM entry and exit do not switch). The
//! [`Vcpu`](super::Vcpu) trait reads and writes every item by [`ArchReg`]; [`ArchState`]
//! gathers all of them plus the MSRs that only the hypervisor models
//! ([`crate::cpu::msr::MsrFile`]), so that one struct serves isolation checks, reset and
//! snapshots.

use crate::cpu::msr::MsrFile;

/// A piece of per-vCPU architectural state besides the general-purpose registers,
/// RIP, RFLAGS and the x87/SSE state (which [`super::Reg`] and the world switch cover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ArchReg {
    /// CR0 (Intel SDM vol. 3A 2.5).
    Cr0,
    /// CR2, the page-fault linear address.
    Cr2,
    /// CR3.
    Cr3,
    /// CR4.
    Cr4,
    /// CR8, the task-priority register (SDM vol. 3A 2.5; bits 3:0).
    Cr8,
    /// DR0, breakpoint linear address 0 (SDM vol. 3B 18.2.1).
    Dr0,
    /// DR1.
    Dr1,
    /// DR2.
    Dr2,
    /// DR3.
    Dr3,
    /// DR6, debug status (SDM vol. 3B 18.2.3).
    Dr6,
    /// DR7, debug control (SDM vol. 3B 18.2.4).
    Dr7,
    /// IA32_EFER as the guest sees it (SVM's EFER.SVME is hidden).
    Efer,
    /// IA32_PAT (SDM vol. 3A 13.12.2).
    Pat,
    /// IA32_FS_BASE.
    FsBase,
    /// IA32_GS_BASE.
    GsBase,
    /// IA32_KERNEL_GS_BASE, swapped with GS.base by SWAPGS.
    KernelGsBase,
    /// IA32_STAR (SYSCALL/SYSRET selectors; AMD APM vol. 2 6.1.1).
    Star,
    /// IA32_LSTAR (64-bit SYSCALL entry).
    Lstar,
    /// IA32_CSTAR (compatibility-mode SYSCALL entry).
    Cstar,
    /// IA32_FMASK (RFLAGS mask of SYSCALL).
    Sfmask,
    /// IA32_SYSENTER_CS (SDM vol. 3A 5.8.7).
    SysenterCs,
    /// IA32_SYSENTER_ESP.
    SysenterEsp,
    /// IA32_SYSENTER_EIP.
    SysenterEip,
    /// IA32_TSC_AUX, read by RDTSCP and RDPID.
    TscAux,
    /// PKRU, the protection-key rights of user pages (SDM vol. 3A 4.6.2).
    Pkru,
    /// The value added to the host TSC when the guest reads its TSC (SVM TSC_OFFSET,
    /// APM vol. 2 15.30.5; VMX TSC offset, SDM vol. 3C 26.3).
    TscOffset,
}

impl ArchReg {
    /// Every item, in declaration order (the index of [`ArchState::regs`]).
    pub const ALL: [ArchReg; 26] = [
        Self::Cr0,
        Self::Cr2,
        Self::Cr3,
        Self::Cr4,
        Self::Cr8,
        Self::Dr0,
        Self::Dr1,
        Self::Dr2,
        Self::Dr3,
        Self::Dr6,
        Self::Dr7,
        Self::Efer,
        Self::Pat,
        Self::FsBase,
        Self::GsBase,
        Self::KernelGsBase,
        Self::Star,
        Self::Lstar,
        Self::Cstar,
        Self::Sfmask,
        Self::SysenterCs,
        Self::SysenterEsp,
        Self::SysenterEip,
        Self::TscAux,
        Self::Pkru,
        Self::TscOffset,
    ];
}

/// DR6 at reset: reserved bits 4-11 and 16-31 set (SDM vol. 3B 18.2.3).
pub const DR6_RESET: u64 = 0xFFFF_0FF0;
/// DR7 at reset: reserved bit 10 set (SDM vol. 3B 18.2.4).
pub const DR7_RESET: u64 = 0x400;
/// IA32_PAT at reset: WB, WT, UC-, UC in entries 0-3 and again in 4-7 (SDM vol. 3A
/// 13.12.4; AMD APM vol. 2 7.8.2).
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// Everything a guest can write besides its general-purpose and x87/SSE registers,
/// copied out of a vCPU and back: the state that must not leak between guests, and
/// the unit of reset and snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchState {
    /// Values by `ArchReg as usize`.
    pub regs: [u64; ArchReg::ALL.len()],
    /// The MSRs only the hypervisor models.
    pub msrs: MsrFile,
}

impl ArchState {
    /// Reads every item of `vcpu` and `msrs`.
    pub fn save<V: super::Vcpu + ?Sized>(vcpu: &V, msrs: &MsrFile) -> Self {
        Self {
            regs: ArchReg::ALL.map(|r| vcpu.arch(r)),
            msrs: msrs.clone(),
        }
    }

    /// Writes every item back into `vcpu` and `msrs`.
    pub fn restore<V: super::Vcpu + ?Sized>(&self, vcpu: &mut V, msrs: &mut MsrFile) {
        for r in ArchReg::ALL {
            vcpu.set_arch(r, self.regs[r as usize]);
        }
        *msrs = self.msrs.clone();
    }

    /// The value of `reg`.
    pub fn get(&self, reg: ArchReg) -> u64 {
        self.regs[reg as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ScriptedVcpu;
    use crate::vcpu::Vcpu;

    #[test]
    fn all_lists_every_item_in_order() {
        for (i, r) in ArchReg::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn save_and_restore_round_trip() {
        let mut a = ScriptedVcpu::new(alloc::vec![]);
        let mut msrs = MsrFile::default();
        for (i, r) in ArchReg::ALL.iter().enumerate() {
            a.set_arch(*r, 0x1000 + i as u64);
        }
        msrs.misc_enable = 0x55;
        let saved = ArchState::save(&a, &msrs);
        assert_eq!(saved.get(ArchReg::Dr3), 0x1000 + ArchReg::Dr3 as u64);
        let mut b = ScriptedVcpu::new(alloc::vec![]);
        let mut other = MsrFile::default();
        saved.restore(&mut b, &mut other);
        assert_eq!(ArchState::save(&b, &other), saved);
        assert_ne!(
            ArchState::save(&ScriptedVcpu::new(alloc::vec![]), &MsrFile::default()),
            saved
        );
    }
}
