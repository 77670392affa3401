//! The virtual CPU every guest sees, independent of the vendor that runs it:
//!
//! * [`cpuid`]: the CPUID leaves (a defined feature set, no host topology, no VMX/SVM,
//!   the hypervisor's own signature leaf).
//! * [`msr`]: the one table of MSRs a guest may read and write, with their per-vCPU
//!   values; any other MSR gets #GP.
//! * [`decode`]: the length of an intercepted instruction read from guest memory, for
//!   CPUs that do not report it (SVM without NRIPS).

pub mod cpuid;
pub mod decode;
pub mod msr;

/// Exception vectors (Intel SDM vol. 3A 6.3.1, table 6-1).
pub mod vector {
    /// #UD, invalid opcode.
    pub const UD: u8 = 6;
    /// #GP, general protection (with an error code).
    pub const GP: u8 = 13;
}
