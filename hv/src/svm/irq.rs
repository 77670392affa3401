//! SVM's translation of the vendor-neutral interrupt requests (`Vcpu::inject_interrupt`,
//! `Vcpu::request_interrupt_window`) into VMCB fields, and the re-queuing of an event
//! whose delivery an exit interrupted.
//!
//! * Injection: EVENTINJ (APM vol. 2, 15.20 "Event Injection"): vector bits 0-7, type
//!   bits 8-10 (0 = external interrupt), EV bit 11 (error code valid), V bit 31, error
//!   code bits 32-63.
//! * Interrupt window: a virtual interrupt request (V_IRQ, bit 8 of V_INTR, with
//!   V_IGN_TPR, bit 20) and the VINTR intercept (vector 3 bit 4): the exit comes as
//!   soon as the guest could take it (APM 15.21.4 "Interrupt Masking in Guest Mode").
//! * EXITINTINFO (APM 15.7.2 "Intercepts During IDT Interrupt Delivery"): same layout
//!   as EVENTINJ; when valid, the event goes back into EVENTINJ so that it is
//!   delivered again on the next VMRUN.
//! * The interrupt shadow: bit 0 of the VMCB's interrupt-state field at 0x68
//!   (APM 15.21.5).

use super::vmcb::{Vmcb, control, intercept3, save};

/// EVENTINJ / EXITINTINFO bit 31: valid.
const EVENT_VALID: u64 = 1 << 31;
/// V_INTR bit 8: V_IRQ, a virtual interrupt is pending.
const V_IRQ: u64 = 1 << 8;
/// V_INTR bit 20: V_IGN_TPR, the virtual interrupt ignores the virtual TPR.
const V_IGN_TPR: u64 = 1 << 20;
/// RFLAGS bit 9: IF.
const RFLAGS_IF: u64 = 1 << 9;

/// Whether an external interrupt injected now is delivered at the next VMRUN.
pub fn ready(vmcb: &Vmcb) -> bool {
    vmcb.read_u64(save::RFLAGS) & RFLAGS_IF != 0
        && vmcb.read_u64(control::INTERRUPT_SHADOW) & 1 == 0
        && vmcb.read_u64(control::EVENT_INJ) & EVENT_VALID == 0
}

/// Queues external interrupt `vector` (type 0).
pub fn inject(vmcb: &mut Vmcb, vector: u8) {
    vmcb.write_u64(control::EVENT_INJ, EVENT_VALID | u64::from(vector));
}

/// Requests or cancels the interrupt-window exit.
pub fn window(vmcb: &mut Vmcb, on: bool) {
    let v_intr = vmcb.read_u64(control::V_INTR);
    let vec3 = vmcb.read_u32(control::INTERCEPT_VEC3);
    if on {
        vmcb.write_u64(control::V_INTR, v_intr | V_IRQ | V_IGN_TPR);
        vmcb.write_u32(control::INTERCEPT_VEC3, vec3 | intercept3::VINTR);
    } else {
        vmcb.write_u64(control::V_INTR, v_intr & !(V_IRQ | V_IGN_TPR));
        vmcb.write_u32(control::INTERCEPT_VEC3, vec3 & !intercept3::VINTR);
    }
}

/// After #VMEXIT: EVENTINJ was consumed by VMRUN; an event whose delivery the exit
/// interrupted (EXITINTINFO valid) is queued again.
pub fn after_exit(vmcb: &mut Vmcb) {
    let info = vmcb.read_u64(control::EXIT_INT_INFO);
    let pending = if info & EVENT_VALID != 0 { info } else { 0 };
    vmcb.write_u64(control::EVENT_INJ, pending);
}
