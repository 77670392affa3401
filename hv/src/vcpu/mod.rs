//! The vendor-neutral vCPU interface: the VM logic drives SVM and VMX vCPUs through
//! [`Vcpu`] and sees their exits as [`VmExit`]; [`state`] names the rest of the
//! architectural state a guest can write ([`ArchReg`], [`ArchState`]).

pub mod state;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

pub use state::{ArchReg, ArchState};

/// A guest register, numbered as in the x86 instruction encoding for RAX..R15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Reg {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
    Rip = 16,
    Rflags = 17,
}

impl Reg {
    /// The general-purpose register with encoding `index` (0 = RAX ... 15 = R15).
    pub fn gpr(index: u8) -> Option<Self> {
        const GPRS: [Reg; 16] = [
            Reg::Rax,
            Reg::Rcx,
            Reg::Rdx,
            Reg::Rbx,
            Reg::Rsp,
            Reg::Rbp,
            Reg::Rsi,
            Reg::Rdi,
            Reg::R8,
            Reg::R9,
            Reg::R10,
            Reg::R11,
            Reg::R12,
            Reg::R13,
            Reg::R14,
            Reg::R15,
        ];
        GPRS.get(usize::from(index)).copied()
    }
}

/// Why the guest stopped running, decoded from the vendor's exit information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// A stage-2 (nested/EPT) fault.
    Stage2Fault(ept::fault::Stage2Fault),
    /// Port I/O (`in`/`out`, single, not string).
    Io {
        /// Port number.
        port: u16,
        /// Access size in bytes (1, 2 or 4).
        size: u8,
        /// `out` (true) or `in` (false).
        write: bool,
        /// A string or REP form (`ins`/`outs`), which the hypervisor refuses.
        string: bool,
    },
    /// VMMCALL / VMCALL.
    Hypercall,
    /// A host interrupt (the scheduling timer) arrived while the guest ran; the host has
    /// handled it once this exit is seen.
    Interrupt,
    /// CPUID.
    Cpuid,
    /// RDMSR (`write == false`) or WRMSR.
    Msr {
        /// WRMSR.
        write: bool,
    },
    /// HLT.
    Hlt,
    /// WBINVD (completed by skipping it: guest memory is write-back and coherent).
    Wbinvd,
    /// Shutdown (triple fault).
    Shutdown,
    /// An intercepted instruction the guest may not use (VMRUN, XSETBV, ...).
    Forbidden {
        /// The instruction.
        what: &'static str,
    },
    /// The vendor refused to enter the guest (invalid guest state).
    InvalidState {
        /// Vendor exit code.
        code: u64,
    },
    /// An exit the hypervisor does not handle.
    Unknown {
        /// Vendor exit code.
        code: u64,
        /// First vendor qualification.
        info1: u64,
        /// Second vendor qualification.
        info2: u64,
    },
}

/// The architectural state a new vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartState {
    /// 64-bit long mode at CPL 0, paging on (guest page tables at `cr3`), flat
    /// segments, interrupts off.
    Long64 {
        /// RIP.
        entry: u64,
        /// RSP.
        rsp: u64,
        /// Guest CR3 (PML4 GPA).
        cr3: u64,
    },
    /// 16-bit real mode (CR0.PE = 0, CR0.PG = 0; Intel SDM vol. 3A 21.1): CS, DS, ES,
    /// FS and GS are `code_segment` (base = selector * 16), SS is `stack_segment`, every
    /// limit 0xFFFF, no guest page tables.
    Real16 {
        /// Selector of CS, DS, ES, FS and GS.
        code_segment: u16,
        /// IP.
        ip: u16,
        /// Selector of SS.
        stack_segment: u16,
        /// SP.
        sp: u16,
    },
}

/// A virtual CPU of one guest.
pub trait Vcpu {
    /// Enters the guest and runs it until the next exit.
    fn run(&mut self) -> VmExit;
    /// Reads a guest register.
    fn reg(&self, reg: Reg) -> u64;
    /// Writes a guest register.
    fn set_reg(&mut self, reg: Reg, value: u64);
    /// Moves RIP past the instruction that caused the last exit (I/O, hypercall,
    /// CPUID, MSR, HLT). Does nothing when the length is unknown
    /// ([`Vcpu::instruction_length_known`] is false and no length was set).
    fn skip_instruction(&mut self);
    /// Whether the hardware reported the length of the instruction that caused the last
    /// exit (VMX always; SVM with NRIPS, or for I/O). When it did not, the exit handler
    /// decodes the instruction ([`crate::cpu::decode`]) and calls
    /// [`Vcpu::set_instruction_length`].
    fn instruction_length_known(&self) -> bool;
    /// Sets the length of the instruction that caused the last exit, for
    /// [`Vcpu::skip_instruction`].
    fn set_instruction_length(&mut self, len: u64);
    /// The code segment the guest runs in, to fetch its instructions.
    fn code_segment(&self) -> CodeSegment;
    /// Reads a piece of architectural state.
    fn arch(&self, reg: ArchReg) -> u64;
    /// Writes a piece of architectural state. Values come from the exit handling,
    /// which has checked them against what the architecture allows ([`crate::cpu::msr`]).
    fn set_arch(&mut self, reg: ArchReg, value: u64);
    /// Delivers a hardware exception to the guest at its next entry, instead of
    /// completing the instruction that exited (RIP stays on it): `vector` (e.g. 13 for
    /// #GP) with `error_code` when the exception has one (Intel SDM vol. 3A 6.13).
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
}

/// The guest's current code segment (Intel SDM vol. 3A 3.4.5; AMD APM vol. 2 4.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeSegment {
    /// Base of CS (0 in 64-bit mode).
    pub base: u64,
    /// The processor runs 64-bit code (EFER.LMA = 1 and CS.L = 1).
    pub long: bool,
    /// CS.D: the default operand and address size is 32 bits (outside 64-bit mode).
    pub default32: bool,
}

/// A request, shared between a guest's address space and its vCPU, to invalidate the
/// vCPU's cached stage-2 translations before it next enters the guest.
///
/// The address space sets it when it completes a flush token; the vCPU consumes it on
/// entry (SVM: `TLB_CONTROL`; VMX: `INVEPT`).
#[derive(Debug, Clone, Default)]
pub struct FlushRequest(Arc<AtomicBool>);

impl FlushRequest {
    /// A new request, not pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for an invalidation before the next entry.
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Takes the pending request, if any.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    /// Whether an invalidation is pending.
    pub fn is_pending(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
