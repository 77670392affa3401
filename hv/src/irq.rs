//! The interrupt line from the virtual devices to the vCPU, vendor-neutral: when the
//! PIC asserts INTR and the guest can take it, the vector is acknowledged at the PIC
//! and injected; when the guest cannot take it yet (IF = 0, an STI/MOV SS shadow, an
//! event already queued), the vCPU is asked for an interrupt-window exit instead. SVM
//! and VMX only translate [`Vcpu::inject_interrupt`] and
//! [`Vcpu::request_interrupt_window`] (`svm::irq`, `vmx::irq`).

use crate::devices::Platform;
use crate::vcpu::Vcpu;

/// What [`deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing is pending.
    Idle,
    /// This vector goes in at the next entry.
    Injected(u8),
    /// An interrupt waits for the guest to open its window.
    Waiting,
}

/// Connects the PIC's INTR output to `vcpu` before an entry.
pub fn deliver<V: Vcpu>(vcpu: &mut V, devices: &mut Platform) -> Delivery {
    if !devices.has_interrupt() {
        vcpu.request_interrupt_window(false);
        return Delivery::Idle;
    }
    if vcpu.interrupt_ready() {
        let vector = devices.acknowledge();
        vcpu.inject_interrupt(vector);
        vcpu.request_interrupt_window(false);
        Delivery::Injected(vector)
    } else {
        vcpu.request_interrupt_window(true);
        Delivery::Waiting
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::testing::ScriptedVcpu;
    use crate::vcpu::Reg;

    fn platform_with_irq0() -> Platform {
        let mut p = Platform::default();
        crate::devices::init_master_pic(&mut p, 0xFE);
        p.pic.raise(0);
        p
    }

    #[test]
    fn injects_when_ready_else_asks_for_a_window() {
        let mut p = platform_with_irq0();
        let mut v = ScriptedVcpu::new(Vec::new());
        assert_eq!(deliver(&mut v, &mut p), Delivery::Waiting, "IF = 0");
        assert!(v.window);
        assert!(v.interrupts.is_empty());
        v.set_reg(Reg::Rflags, 0x202);
        assert_eq!(deliver(&mut v, &mut p), Delivery::Injected(0x30));
        assert!(!v.window);
        assert_eq!(v.interrupts, [0x30]);
        // In service until EOI: nothing more.
        assert_eq!(deliver(&mut v, &mut p), Delivery::Idle);
    }
}
