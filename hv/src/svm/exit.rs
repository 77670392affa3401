//! Decoding SVM exits (AMD APM vol. 2, appendix C, and 15.7-15.25) into [`VmExit`].

use crate::vcpu::VmExit;

/// Exit codes (APM vol. 2, appendix C, table C-1).
pub mod code {
    /// A physical maskable interrupt (INTR).
    pub const INTR: u64 = 0x60;
    /// A non-maskable interrupt.
    pub const NMI: u64 = 0x61;
    /// INIT.
    pub const INIT: u64 = 0x63;
    /// RDPMC.
    pub const RDPMC: u64 = 0x6F;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// RSM.
    pub const RSM: u64 = 0x73;
    /// INVLPGA.
    pub const INVLPGA: u64 = 0x7A;
    /// Task switch.
    pub const TASK_SWITCH: u64 = 0x7D;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// IN/OUT.
    pub const IOIO: u64 = 0x7B;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7C;
    /// Shutdown.
    pub const SHUTDOWN: u64 = 0x7F;
    /// VMRUN.
    pub const VMRUN: u64 = 0x80;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// VMLOAD.
    pub const VMLOAD: u64 = 0x82;
    /// VMSAVE.
    pub const VMSAVE: u64 = 0x83;
    /// STGI.
    pub const STGI: u64 = 0x84;
    /// CLGI.
    pub const CLGI: u64 = 0x85;
    /// SKINIT.
    pub const SKINIT: u64 = 0x86;
    /// RDTSCP.
    pub const RDTSCP: u64 = 0x87;
    /// WBINVD.
    pub const WBINVD: u64 = 0x89;
    /// MONITOR.
    pub const MONITOR: u64 = 0x8A;
    /// MWAIT.
    pub const MWAIT: u64 = 0x8B;
    /// XSETBV.
    pub const XSETBV: u64 = 0x8D;
    /// RDPRU.
    pub const RDPRU: u64 = 0x8E;
    /// INVLPGB.
    pub const INVLPGB: u64 = 0xA0;
    /// INVLPGB with illegal operands.
    pub const INVLPGB_ILLEGAL: u64 = 0xA1;
    /// TLBSYNC.
    pub const TLBSYNC: u64 = 0xA4;
    /// INVD.
    pub const INVD: u64 = 0x76;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
    /// VMRUN refused the VMCB (low 32 bits all ones; APM 15.5.1).
    pub const INVALID: u32 = 0xFFFF_FFFF;
}

/// IOIO EXITINFO1 bits (APM vol. 2, 15.10.2, figure 15-2).
pub mod ioio {
    /// 1 = IN, 0 = OUT.
    pub const TYPE_IN: u64 = 1 << 0;
    /// String instruction.
    pub const STR: u64 = 1 << 2;
    /// REP prefix.
    pub const REP: u64 = 1 << 3;
    /// 8-bit operand.
    pub const SZ8: u64 = 1 << 4;
    /// 16-bit operand.
    pub const SZ16: u64 = 1 << 5;
    /// 32-bit operand.
    pub const SZ32: u64 = 1 << 6;
    /// Port number: bits 16-31.
    pub const PORT_SHIFT: u32 = 16;
}

/// Decodes an exit from its code and EXITINFO1/2.
pub fn decode(exit_code: u64, info1: u64, info2: u64) -> VmExit {
    if exit_code as u32 == code::INVALID {
        return VmExit::InvalidState { code: exit_code };
    }
    match exit_code {
        code::NPF => VmExit::Stage2Fault(ept::fault::Stage2Fault::from_npf(info1, info2)),
        code::IOIO => VmExit::Io {
            port: (info1 >> ioio::PORT_SHIFT) as u16,
            size: if info1 & ioio::SZ32 != 0 {
                4
            } else if info1 & ioio::SZ16 != 0 {
                2
            } else {
                1
            },
            write: info1 & ioio::TYPE_IN == 0,
            string: info1 & (ioio::STR | ioio::REP) != 0,
        },
        code::VMMCALL => VmExit::Hypercall,
        // An NMI is taken by the host's handler after STGI, like INTR.
        code::INTR | code::NMI => VmExit::Interrupt,
        code::CPUID => VmExit::Cpuid,
        code::MSR => VmExit::Msr {
            write: info1 & 1 != 0,
        },
        code::HLT => VmExit::Hlt,
        code::SHUTDOWN => VmExit::Shutdown,
        code::VMRUN => VmExit::Forbidden { what: "VMRUN" },
        code::VMLOAD => VmExit::Forbidden { what: "VMLOAD" },
        code::VMSAVE => VmExit::Forbidden { what: "VMSAVE" },
        code::STGI => VmExit::Forbidden { what: "STGI" },
        code::CLGI => VmExit::Forbidden { what: "CLGI" },
        code::SKINIT => VmExit::Forbidden { what: "SKINIT" },
        code::XSETBV => VmExit::Forbidden { what: "XSETBV" },
        code::INVD => VmExit::Forbidden { what: "INVD" },
        code::INVLPGA => VmExit::Forbidden { what: "INVLPGA" },
        code::INIT => VmExit::Forbidden { what: "INIT" },
        code::RDPMC => VmExit::Forbidden { what: "RDPMC" },
        code::RSM => VmExit::Forbidden { what: "RSM" },
        code::TASK_SWITCH => VmExit::Forbidden {
            what: "a task switch",
        },
        code::RDTSCP => VmExit::Forbidden { what: "RDTSCP" },
        code::WBINVD => VmExit::Wbinvd,
        code::MONITOR => VmExit::Forbidden { what: "MONITOR" },
        code::MWAIT => VmExit::Forbidden { what: "MWAIT" },
        code::RDPRU => VmExit::Forbidden { what: "RDPRU" },
        code::INVLPGB | code::INVLPGB_ILLEGAL => VmExit::Forbidden { what: "INVLPGB" },
        code::TLBSYNC => VmExit::Forbidden { what: "TLBSYNC" },
        _ => VmExit::Unknown {
            code: exit_code,
            info1,
            info2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ept::fault::FaultKind;

    #[test]
    fn io_exit_fields() {
        // OUT dx, al to 0x3f8: type OUT, SZ8, port in bits 16-31.
        let info1 = (0x3f8 << 16) | ioio::SZ8;
        assert_eq!(
            decode(code::IOIO, info1, 0x1234),
            VmExit::Io {
                port: 0x3f8,
                size: 1,
                write: true,
                string: false
            }
        );
        let info1 = (0x60 << 16) | ioio::SZ32 | ioio::TYPE_IN | ioio::REP | ioio::STR;
        assert_eq!(
            decode(code::IOIO, info1, 0),
            VmExit::Io {
                port: 0x60,
                size: 4,
                write: false,
                string: true
            }
        );
    }

    #[test]
    fn simple_exits() {
        assert_eq!(decode(code::VMMCALL, 0, 0), VmExit::Hypercall);
        assert_eq!(decode(code::MSR, 1, 0), VmExit::Msr { write: true });
        assert_eq!(decode(code::MSR, 0, 0), VmExit::Msr { write: false });
        assert_eq!(decode(code::SHUTDOWN, 0, 0), VmExit::Shutdown);
        assert_eq!(decode(code::INTR, 0, 0), VmExit::Interrupt);
        assert_eq!(
            decode(code::VMRUN, 0, 0),
            VmExit::Forbidden { what: "VMRUN" }
        );
        assert_eq!(
            decode(u64::MAX, 0, 0),
            VmExit::InvalidState { code: u64::MAX }
        );
        assert_eq!(
            decode(0xFFFF_FFFF, 0, 0),
            VmExit::InvalidState { code: 0xFFFF_FFFF }
        );
        assert!(matches!(
            decode(0x65, 1, 2),
            VmExit::Unknown { code: 0x65, .. }
        ));
        assert_eq!(
            decode(code::INVLPGA, 0, 0),
            VmExit::Forbidden { what: "INVLPGA" }
        );
        assert_eq!(decode(code::WBINVD, 0, 0), VmExit::Wbinvd);
    }

    #[test]
    fn npf_decodes_through_ept() {
        // Present + write, final translation (bit 32): a permission fault on a write.
        let VmExit::Stage2Fault(f) = decode(code::NPF, (1 << 32) | 0b11, 0x40_1000) else {
            panic!("not a stage-2 fault");
        };
        assert_eq!(usize::from(f.gpa), 0x40_1000);
        assert_eq!(f.kind, FaultKind::Permission);
        let VmExit::Stage2Fault(f) = decode(code::NPF, (1 << 32) | 0b10, 0x9000) else {
            panic!("not a stage-2 fault");
        };
        assert_eq!(f.kind, FaultKind::NotPresent);
    }
}
