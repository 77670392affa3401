//! Intel VMX with EPT (Intel SDM vol. 3C, chapters 24-30), beside [`crate::svm`].
//!
//! * [`fields`]: VMCS field encodings and control bits.
//! * [`caps`]: what the CPU offers ([`VmxCaps`], read from the VMX capability MSRs)
//!   and how the VM-execution controls are computed from them.
//! * [`exit`]: decoding exit reasons into [`crate::vcpu::VmExit`].
//! * [`instr`]: the VMX instructions (VMXON, VMPTRLD, VMREAD, INVEPT, ...).
//! * [`vcpu`]: [`VmxVcpu`], the world switch, and [`VmxHost`] (VMXON region, VPIDs,
//!   INVEPT type), which implements [`crate::hypervisor::VcpuHost`].
//! * `vmcs`: VMREAD/VMWRITE of the current VMCS and the control, host and guest
//!   state a new VMCS gets.
//! * `state`: the vCPU's architectural state by [`crate::vcpu::ArchReg`] and the
//!   emulation of MOV CR8; `host`: the host state read from the running CPU; `probe`:
//!   the capability MSRs read from it; `world`: the world-switch assembly
//!   (VMLAUNCH/VMRESUME and the VM-exit entry point).

pub mod caps;
pub mod exit;
pub mod fields;
mod host;
pub mod instr;
pub mod irq;
mod probe;
mod state;
pub mod vcpu;
mod vmcs;
mod world;

pub use caps::{VmxCaps, VmxError};
pub use vcpu::{VmxHost, VmxVcpu};

/// CPUID.01H:ECX bit 5: VMX (SDM vol. 2A, CPUID, table 3-10).
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;

/// Whether CPUID reports VMX (the hypervisor then uses this back-end, SVM otherwise).
pub fn cpu_has_vmx() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & CPUID_1_ECX_VMX != 0
}
