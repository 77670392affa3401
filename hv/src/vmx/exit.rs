//! Decoding VMX exits (SDM vol. 3C, chapter 28 and appendix C) into [`VmExit`].

use ept::fault::Stage2Fault;

use crate::vcpu::VmExit;

/// Basic exit reasons (SDM vol. 3D, appendix C, table C-1).
pub mod reason {
    /// Exception or NMI.
    pub const EXCEPTION_NMI: u16 = 0;
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    /// Triple fault.
    pub const TRIPLE_FAULT: u16 = 2;
    /// INIT signal.
    pub const INIT: u16 = 3;
    /// Start-up IPI.
    pub const SIPI: u16 = 4;
    /// Task switch (always exits, SDM vol. 3C 26.1.2).
    pub const TASK_SWITCH: u16 = 9;
    /// CPUID.
    pub const CPUID: u16 = 10;
    /// GETSEC.
    pub const GETSEC: u16 = 11;
    /// HLT.
    pub const HLT: u16 = 12;
    /// INVD.
    pub const INVD: u16 = 13;
    /// RDPMC.
    pub const RDPMC: u16 = 15;
    /// RSM.
    pub const RSM: u16 = 17;
    /// VMCALL.
    pub const VMCALL: u16 = 18;
    /// VMCLEAR (the first of the VMX instructions, 19-27).
    pub const VMCLEAR: u16 = 19;
    /// VMXON (the last of the VMX instructions, 19-27).
    pub const VMXON: u16 = 27;
    /// Control-register access.
    pub const CR_ACCESS: u16 = 28;
    /// I/O instruction.
    pub const IO: u16 = 30;
    /// RDMSR.
    pub const RDMSR: u16 = 31;
    /// WRMSR.
    pub const WRMSR: u16 = 32;
    /// VM-entry failure: invalid guest state.
    pub const INVALID_GUEST_STATE: u16 = 33;
    /// VM-entry failure: MSR loading.
    pub const MSR_LOADING: u16 = 34;
    /// MWAIT.
    pub const MWAIT: u16 = 36;
    /// MONITOR.
    pub const MONITOR: u16 = 39;
    /// VM-entry failure: machine-check event.
    pub const MACHINE_CHECK: u16 = 41;
    /// EPT violation.
    pub const EPT_VIOLATION: u16 = 48;
    /// EPT misconfiguration.
    pub const EPT_MISCONFIG: u16 = 49;
    /// INVEPT.
    pub const INVEPT: u16 = 50;
    /// INVVPID.
    pub const INVVPID: u16 = 53;
    /// WBINVD.
    pub const WBINVD: u16 = 54;
    /// XSETBV.
    pub const XSETBV: u16 = 55;
    /// INVPCID.
    pub const INVPCID: u16 = 58;
    /// ENCLS.
    pub const ENCLS: u16 = 60;
}

/// Exit-reason bit 31: the VM entry failed (SDM vol. 3C 25.9.1, table 25-18).
pub const ENTRY_FAILURE: u32 = 1 << 31;

/// I/O exit qualification (SDM vol. 3C 28.2.1, table 28-5).
pub mod io_qual {
    /// Bits 2:0: access size minus one (0, 1 or 3).
    pub const SIZE_MASK: u64 = 0b111;
    /// Bit 3: 1 = IN, 0 = OUT.
    pub const DIRECTION_IN: u64 = 1 << 3;
    /// Bit 4: string instruction.
    pub const STRING: u64 = 1 << 4;
    /// Bit 5: REP prefix.
    pub const REP: u64 = 1 << 5;
    /// Bits 31:16: port number.
    pub const PORT_SHIFT: u32 = 16;
}

/// `code` of [`VmExit::InvalidState`] when VMLAUNCH/VMRESUME failed outright
/// (VMfailValid/VMfailInvalid, SDM vol. 3C 31.4): this bit plus the VM-instruction
/// error number. Entry failures that reach the exit path carry the raw exit reason
/// (bit 31 set) instead.
pub const VMFAIL: u64 = 1 << 32;

/// Whether an exit of `basic` reason reports the instruction's length in the
/// VM-exit instruction-length field, so that the instruction can be skipped
/// (SDM vol. 3C 28.2.4).
pub fn has_instruction_length(basic: u16) -> bool {
    matches!(
        basic,
        reason::CPUID
            | reason::HLT
            | reason::VMCALL
            | reason::IO
            | reason::RDMSR
            | reason::WRMSR
            | reason::WBINVD
            | reason::CR_ACCESS
    )
}

/// The VMX instructions of exit reasons 19-27, in order (SDM vol. 3D table C-1).
const VMX_INSTRUCTIONS: [&str; 9] = [
    "VMCLEAR", "VMLAUNCH", "VMPTRLD", "VMPTRST", "VMREAD", "VMRESUME", "VMWRITE", "VMXOFF", "VMXON",
];

/// Decodes an exit from its raw exit reason, exit qualification and the
/// guest-physical-address field (read for EPT violations and misconfigurations).
pub fn decode(exit_reason: u32, qualification: u64, gpa: u64) -> VmExit {
    if exit_reason & ENTRY_FAILURE != 0 {
        return VmExit::InvalidState {
            code: u64::from(exit_reason),
        };
    }
    let basic = exit_reason as u16;
    match basic {
        reason::EPT_VIOLATION => {
            VmExit::Stage2Fault(Stage2Fault::from_ept_violation(qualification, gpa))
        }
        reason::EPT_MISCONFIG => VmExit::Stage2Fault(Stage2Fault::from_ept_misconfig(gpa)),
        reason::IO => VmExit::Io {
            port: (qualification >> io_qual::PORT_SHIFT) as u16,
            size: ((qualification & io_qual::SIZE_MASK) + 1) as u8,
            write: qualification & io_qual::DIRECTION_IN == 0,
            string: qualification & (io_qual::STRING | io_qual::REP) != 0,
        },
        reason::VMCALL => VmExit::Hypercall,
        reason::EXTERNAL_INTERRUPT => VmExit::Interrupt,
        reason::CPUID => VmExit::Cpuid,
        reason::RDMSR => VmExit::Msr { write: false },
        reason::WRMSR => VmExit::Msr { write: true },
        reason::HLT => VmExit::Hlt,
        reason::TRIPLE_FAULT => VmExit::Shutdown,
        reason::VMCLEAR..=reason::VMXON => VmExit::Forbidden {
            what: VMX_INSTRUCTIONS[usize::from(basic - reason::VMCLEAR)],
        },
        reason::INVEPT => VmExit::Forbidden { what: "INVEPT" },
        reason::INVVPID => VmExit::Forbidden { what: "INVVPID" },
        reason::GETSEC => VmExit::Forbidden { what: "GETSEC" },
        reason::INVD => VmExit::Forbidden { what: "INVD" },
        reason::XSETBV => VmExit::Forbidden { what: "XSETBV" },
        reason::INIT | reason::SIPI => VmExit::Forbidden {
            what: "an INIT or start-up IPI",
        },
        reason::TASK_SWITCH => VmExit::Forbidden {
            what: "a task switch",
        },
        reason::RDPMC => VmExit::Forbidden { what: "RDPMC" },
        reason::RSM => VmExit::Forbidden { what: "RSM" },
        reason::MWAIT => VmExit::Forbidden { what: "MWAIT" },
        reason::MONITOR => VmExit::Forbidden { what: "MONITOR" },
        reason::INVPCID => VmExit::Forbidden { what: "INVPCID" },
        reason::ENCLS => VmExit::Forbidden { what: "ENCLS" },
        reason::WBINVD => VmExit::Wbinvd,
        // MOV CR8 is emulated inside the vCPU; any other CR access the controls
        // intercept (CR4.VMXE, which the guest does not own) ends the guest.
        reason::CR_ACCESS => VmExit::Forbidden {
            what: "this control-register access",
        },
        _ => VmExit::Unknown {
            code: u64::from(exit_reason),
            info1: qualification,
            info2: gpa,
        },
    }
}

/// A short name for a VM-instruction error number (SDM vol. 3C 31.4, table 31-1).
pub fn instruction_error_name(error: u32) -> &'static str {
    match error {
        0 => "VMfailInvalid (no current VMCS)",
        2 => "VMCLEAR with invalid physical address",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "other VM-instruction error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ept::fault::FaultKind;
    use ept::format::Access;

    #[test]
    fn io_exit_fields() {
        // OUT dx, al to 0x3f8: size 1, OUT, port in bits 31:16 (as Bochs reports).
        assert_eq!(
            decode(u32::from(reason::IO), 0x03F8_0040, 0),
            VmExit::Io {
                port: 0x3f8,
                size: 1,
                write: true,
                string: false
            }
        );
        // REP INSD from port 0x60.
        assert_eq!(
            decode(u32::from(reason::IO), (0x60 << 16) | 0b11_1011, 0),
            VmExit::Io {
                port: 0x60,
                size: 4,
                write: false,
                string: true
            }
        );
        // 16-bit IN.
        assert!(matches!(
            decode(u32::from(reason::IO), (0x3fd << 16) | 0b1001, 0),
            VmExit::Io {
                size: 2,
                write: false,
                ..
            }
        ));
    }

    #[test]
    fn ept_exits_go_to_the_shared_fault_path() {
        // Write to an unmapped page, final access (bits 1, 7, 8).
        let VmExit::Stage2Fault(f) = decode(48, 0x182, 0x40_1000) else {
            panic!("not a stage-2 fault");
        };
        assert_eq!(usize::from(f.gpa), 0x40_1000);
        assert_eq!((f.access, f.kind), (Access::WRITE, FaultKind::NotPresent));
        // Fetch from a readable, writable page: a permission fault.
        let VmExit::Stage2Fault(f) = decode(48, 0x4 | 0x8 | 0x10 | 0x180, 0x100_0000) else {
            panic!("not a stage-2 fault");
        };
        assert_eq!((f.access, f.kind), (Access::EXECUTE, FaultKind::Permission));
        let VmExit::Stage2Fault(f) = decode(49, 0, 0x2000) else {
            panic!("not a stage-2 fault");
        };
        assert_eq!(f.kind, FaultKind::Misconfig);
    }

    #[test]
    fn simple_and_refused_exits() {
        assert_eq!(decode(18, 0, 0), VmExit::Hypercall);
        assert_eq!(decode(10, 0, 0), VmExit::Cpuid);
        assert_eq!(decode(12, 0, 0), VmExit::Hlt);
        assert_eq!(decode(2, 0, 0), VmExit::Shutdown);
        assert_eq!(decode(31, 0, 0), VmExit::Msr { write: false });
        assert_eq!(decode(32, 0, 0), VmExit::Msr { write: true });
        assert!(matches!(decode(24, 0, 0), VmExit::Forbidden { .. }));
        assert!(matches!(
            decode(55, 0, 0),
            VmExit::Forbidden { what: "XSETBV" }
        ));
        assert_eq!(
            decode(ENTRY_FAILURE | 33, 0, 0),
            VmExit::InvalidState { code: 0x8000_0021 }
        );
        assert_eq!(decode(1, 0, 0), VmExit::Interrupt);
        assert_eq!(
            decode(5, 5, 6),
            VmExit::Unknown {
                code: 5,
                info1: 5,
                info2: 6
            }
        );
        assert_eq!(decode(23, 0, 0), VmExit::Forbidden { what: "VMREAD" });
        assert_eq!(decode(27, 0, 0), VmExit::Forbidden { what: "VMXON" });
        assert_eq!(decode(54, 0, 0), VmExit::Wbinvd);
        assert!(has_instruction_length(reason::VMCALL));
        assert!(!has_instruction_length(reason::EPT_VIOLATION));
        assert!(!has_instruction_length(reason::TRIPLE_FAULT));
        assert_eq!(
            instruction_error_name(7),
            "VM entry with invalid control field(s)"
        );
    }
}
