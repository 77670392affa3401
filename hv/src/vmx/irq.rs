//! VMX's translation of the vendor-neutral interrupt requests into VMCS fields, and
//! the re-queuing of an event whose delivery a VM exit interrupted.
//!
//! * Injection: the VM-entry interruption-information field (SDM vol. 3C 25.8.3,
//!   table 25-17): vector bits 0-7, type bits 8-10 (0 = external interrupt), deliver
//!   error code bit 11, valid bit 31; with the entry exception error code and
//!   instruction length fields for events that carry them.
//! * Interrupt window: the "interrupt-window exiting" control (primary processor-based
//!   controls bit 2, table 25-6); the exit (reason 7) comes at the first instruction
//!   boundary where RFLAGS.IF = 1 and nothing blocks interrupts (SDM 26.7.5).
//! * IDT-vectoring information (SDM 28.2.4, table 28-8): an event whose delivery the
//!   exit interrupted; queued again for the next entry (SDM 28.2.4 "Information for
//!   VM Exits During Event Delivery").
//! * Blocking by STI / MOV SS: guest interruptibility state bits 0-1 (table 25-3).
//!
//! The VMCS is current only during an entry, so the state lives here and is written
//! in [`Events::before_entry`] and read in [`Events::after_exit`].

use super::fields::field32;
use super::instr::{self, VmFail};

/// Bit 31 of the interruption-information fields: valid.
const VALID: u32 = 1 << 31;
/// Bit 11: an error code is delivered.
const ERROR_CODE: u32 = 1 << 11;
/// Primary processor-based control bit 2: interrupt-window exiting.
const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
/// IDT-vectoring information and error code (SDM vol. 3C, appendix B.3.3).
const IDT_VECTORING_INFO: u32 = 0x4408;
const IDT_VECTORING_ERROR: u32 = 0x440A;
/// VM-entry exception error code and instruction length (appendix B.3.1).
const ENTRY_EXCEPTION_ERROR: u32 = 0x4018;
const ENTRY_INSTRUCTION_LEN: u32 = 0x401A;
/// RFLAGS bit 9: IF.
const RFLAGS_IF: u64 = 1 << 9;

/// A vCPU's pending event, window request and last interruptibility state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Events {
    /// `(interruption information, error code, instruction length)` to inject.
    pending: Option<(u32, u32, u32)>,
    window: bool,
    /// Guest interruptibility state at the last exit (bits 0-1: STI, MOV SS).
    blocking: u32,
}

impl Events {
    /// Whether an external interrupt injected now is delivered at the next entry.
    pub fn ready(&self, rflags: u64) -> bool {
        rflags & RFLAGS_IF != 0 && self.blocking & 0b11 == 0 && self.pending.is_none()
    }

    /// Queues external interrupt `vector`.
    pub fn inject(&mut self, vector: u8) {
        self.pending = Some((VALID | u32::from(vector), 0, 0));
    }

    /// Requests or cancels the interrupt-window exit.
    pub fn set_window(&mut self, on: bool) {
        self.window = on;
    }

    /// The blocking an executed (skipped) instruction ended.
    pub fn clear_blocking(&mut self) {
        self.blocking = 0;
    }

    /// Writes the event and the window control into the current VMCS.
    pub fn before_entry(&mut self) -> Result<(), VmFail> {
        let (info, error, len) = self.pending.take().unwrap_or((0, 0, 0));
        write(field32::ENTRY_INTERRUPTION_INFO, info)?;
        if info & ERROR_CODE != 0 {
            write(ENTRY_EXCEPTION_ERROR, error)?;
        }
        write(ENTRY_INSTRUCTION_LEN, len)?;
        let controls = read(field32::PROC_CONTROLS);
        let controls = if self.window {
            controls | INTERRUPT_WINDOW_EXITING
        } else {
            controls & !INTERRUPT_WINDOW_EXITING
        };
        write(field32::PROC_CONTROLS, controls)
    }

    /// Reads the interrupted event and the interruptibility state after an exit.
    pub fn after_exit(&mut self) {
        self.blocking = read(field32::GUEST_INTERRUPTIBILITY);
        let info = read(IDT_VECTORING_INFO);
        if info & VALID != 0 {
            // Bits 0-11 and 31 carry over (bit 12 is undefined here).
            let error = read(IDT_VECTORING_ERROR);
            let len = read(field32::EXIT_INSTRUCTION_LEN);
            self.pending = Some((info & (VALID | 0x0FFF), error, len));
        }
    }
}

/// Reads a 32-bit field of the current VMCS.
fn read(field: u32) -> u32 {
    // SAFETY: callers run while this vCPU's VMCS is current (entry and exit paths);
    // VMREAD only reads it, and every field used here exists in every VMCS.
    unsafe { instr::vmread(field) as u32 }
}

/// Writes a 32-bit field of the current VMCS.
fn write(field: u32, value: u32) -> Result<(), VmFail> {
    // SAFETY: as for `read`; the values written are valid for their fields (SDM vol.
    // 3C 27.2.1.3 checks the event injection fields at entry).
    unsafe { instr::vmwrite(field, u64::from(value)) }
}
