//! A guest's memory as the VM logic sees it: [`GuestMemory`].
//!
//! The VM logic (exits, hypercalls, reports) only needs these operations, so it does
//! not depend on how guest memory is managed (and host tests can use a fake);
//! [`crate::space_memory::SpaceMemory`] implements them on `ept::space::AddressSpace`.

use alloc::string::String;

use ept::caps::Stage2Caps;
use ept::fault::Stage2Fault;
use ept::format::Access;

use crate::outcome::FaultKind;
use crate::settings::GuestSettings;
use crate::vcpu::FlushRequest;

/// Why a memory operation failed, in the terms a guest's end is reported in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryError {
    /// The fault kind (for `expect=fault:KIND`).
    pub kind: FaultKind,
    /// The guest-physical address concerned, if any.
    pub gpa: Option<u64>,
    /// What happened, in words.
    pub detail: String,
}

impl MemoryError {
    /// A new error.
    pub fn new(kind: FaultKind, gpa: Option<u64>, detail: String) -> Self {
        Self { kind, gpa, detail }
    }
}

/// The value a linear (MMIO) window holds at host offset `offset` before the guest
/// runs: lets a guest check that it sees the host buffer, byte for byte.
pub fn mmio_pattern(offset: u64) -> u64 {
    0x4D4D_494F_0000_0000 | (offset & 0xFFFF_FFFF)
}

/// The fault kind of an access a mapping's rights refuse.
pub fn permission_kind(access: Access) -> FaultKind {
    if access.contains(Access::EXECUTE) {
        FaultKind::Exec
    } else if access.contains(Access::WRITE) {
        FaultKind::Write
    } else {
        FaultKind::Read
    }
}

/// One guest's stage-2 memory.
pub trait GuestMemory: Sized {
    /// What guests share between them (shared windows), one for the whole run; it
    /// is dropped after the last guest, before the leak check.
    type Shared: Default;
    /// Builds the memory that `settings` describe (RAM at 0, extra areas, windows).
    fn create(
        settings: &GuestSettings,
        caps: Stage2Caps,
        flush: FlushRequest,
    ) -> Result<Self, MemoryError>;
    /// Maps the shared windows `settings` name (`window=`), creating each the first
    /// time a guest names it.
    fn attach_shared(
        &mut self,
        settings: &GuestSettings,
        shared: &mut Self::Shared,
    ) -> Result<(), MemoryError>;
    /// Balloon: gives the frames of `[gpa, gpa + size)` back; returns the frames
    /// given back and the RAM frames held afterwards.
    fn balloon(&mut self, gpa: u64, size: u64) -> Result<(u64, u64), MemoryError>;
    /// The hardware root pointer (nCR3 or EPTP).
    fn root_pointer(&self) -> u64;
    /// Serves a stage-2 fault: `Ok` when the guest may retry the access.
    fn handle_fault(&mut self, fault: Stage2Fault) -> Result<(), MemoryError>;
    /// Writes guest memory (as the guest would; on-demand pages get backed).
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), MemoryError>;
    /// Reads guest memory.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Size of the stage-2 leaf mapping `gpa`, if mapped.
    fn leaf_size(&self, gpa: u64) -> Option<u64>;
    /// Changes the rights of `[gpa, gpa + size)`.
    fn protect(&mut self, gpa: u64, size: u64, access: Access) -> Result<(), MemoryError>;
    /// Removes `[gpa, gpa + size)`.
    fn unmap(&mut self, gpa: u64, size: u64) -> Result<(), MemoryError>;
    /// A copy-on-write clone for a new guest whose vCPU uses `flush`.
    fn try_clone(&mut self, flush: FlushRequest) -> Result<Self, MemoryError>;
    /// Freezes the memory contents (copy-on-write), replacing an earlier snapshot.
    fn snapshot(&mut self) -> Result<(), MemoryError>;
    /// Brings the memory back to the snapshot's contents; returns the pages restored.
    fn reset(&mut self) -> Result<u64, MemoryError>;
    /// Stage-2 faults served so far.
    fn faults_handled(&self) -> u64;
    /// The stage-2 report: areas, leaves per size, table frames, faults (lines).
    fn report(&self) -> String;
}
