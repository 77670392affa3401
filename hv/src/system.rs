//! The machine around a full-system guest (Linux): its devices ([`Platform`]), its
//! clock, and the halted state. The VM's exit handling calls in here for port I/O,
//! HLT, and before every entry (timers, interrupt delivery, waiting while halted).
//!
//! HLT with RFLAGS.IF = 1 halts the vCPU until the next interrupt: the guest is not
//! entered again until the PIC asserts INTR; while it waits the other guests run, and
//! when it is alone the hypervisor waits for the next timer event. HLT with IF = 0
//! (or with no timer armed, so that nothing could ever wake it) ends the guest as
//! "halted".

use alloc::format;

use crate::clock::GuestClock;
use crate::devices::{IoOutcome, Platform};
use crate::irq::{Delivery, deliver};
use crate::outcome::{FaultKind, GuestEnd};
use crate::vcpu::{Reg, Vcpu};

/// RFLAGS bit 9: IF.
const RFLAGS_IF: u64 = 1 << 9;
/// Longest a halted guest keeps the CPU waiting before the others get a turn (ns).
const MAX_WAIT_NS: u64 = 2_000_000;

/// What the VM must do after a step of the full-system logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemStep {
    /// Enter the guest.
    Run,
    /// The guest is halted and nothing is pending: let the others run.
    Wait,
    /// The guest wrote a byte to its serial port (resume it).
    Serial(u8),
    /// Resume the guest.
    Continue,
    /// The guest has ended.
    End(GuestEnd),
}

/// The devices, clock and run state of a full-system guest.
#[derive(Debug, Clone, Default)]
pub struct FullSystem {
    /// The devices.
    pub devices: Platform,
    clock: GuestClock,
    halted: bool,
    /// Interrupts injected.
    pub injected: u64,
    /// HLTs that waited for an interrupt.
    pub halts: u64,
}

impl FullSystem {
    /// Timers, wake-up and interrupt delivery before entering `vcpu`.
    pub fn before_entry<V: Vcpu>(&mut self, vcpu: &mut V) -> SystemStep {
        let now = self.clock.now();
        self.devices.poll(now);
        if self.halted {
            if !self.devices.has_interrupt() {
                let Some(next) = self.devices.next_event(now) else {
                    return SystemStep::End(GuestEnd::Fault {
                        kind: FaultKind::Instruction,
                        gpa: None,
                        detail:
                            "HLT with interrupts enabled but no timer armed: nothing can wake it"
                                .into(),
                    });
                };
                let until = next.min(now + MAX_WAIT_NS);
                while self.clock.now() < until {
                    core::hint::spin_loop();
                }
                self.devices.poll(self.clock.now());
                if !self.devices.has_interrupt() {
                    return SystemStep::Wait;
                }
            }
            self.halted = false;
        }
        if let Delivery::Injected(_) = deliver(vcpu, &mut self.devices) {
            self.injected += 1;
        }
        SystemStep::Run
    }

    /// HLT: halts until the next interrupt when IF = 1, ends the guest when IF = 0.
    pub fn hlt<V: Vcpu>(&mut self, vcpu: &mut V) -> SystemStep {
        if vcpu.reg(Reg::Rflags) & RFLAGS_IF == 0 {
            return SystemStep::End(GuestEnd::Halted);
        }
        vcpu.skip_instruction();
        self.halted = true;
        self.halts += 1;
        SystemStep::Continue
    }

    /// One `IN`/`OUT` of `size` bytes at `port`.
    pub fn io<V: Vcpu>(
        &mut self,
        vcpu: &mut V,
        port: u16,
        size: u8,
        write: bool,
        string: bool,
    ) -> SystemStep {
        if string {
            return SystemStep::End(io_fault(format!(
                "string {} of {size} byte(s) at port {port:#x} refused: not emulated",
                if write { "OUT" } else { "IN" }
            )));
        }
        let mask: u64 = match size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        };
        let rax = vcpu.reg(Reg::Rax);
        let now = self.clock.now();
        let step = match self.devices.io(port, size, write, (rax & mask) as u32, now) {
            IoOutcome::Read(value) => {
                // A 32-bit IN zero-extends into RAX; 8- and 16-bit ones merge.
                let value = u64::from(value) & mask;
                let new = if size == 4 {
                    value
                } else {
                    (rax & !mask) | value
                };
                vcpu.set_reg(Reg::Rax, new);
                SystemStep::Continue
            }
            IoOutcome::Written => SystemStep::Continue,
            IoOutcome::Serial(byte) => SystemStep::Serial(byte),
            IoOutcome::Reset => {
                return SystemStep::End(GuestEnd::Fault {
                    kind: FaultKind::Shutdown,
                    gpa: None,
                    detail: "the guest requested a reset (i8042 reset line)".into(),
                });
            }
            IoOutcome::Refused(why) => return SystemStep::End(io_fault(why)),
        };
        vcpu.skip_instruction();
        step
    }
}

fn io_fault(detail: alloc::string::String) -> GuestEnd {
    GuestEnd::Fault {
        kind: FaultKind::Io,
        gpa: None,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::testing::ScriptedVcpu;

    #[test]
    fn hlt_with_if_clear_ends_and_with_if_set_waits_for_the_timer() {
        let mut s = FullSystem::default();
        let mut v = ScriptedVcpu::new(Vec::new());
        assert_eq!(s.hlt(&mut v), SystemStep::End(GuestEnd::Halted));
        v.set_reg(Reg::Rflags, 0x202);
        assert_eq!(s.hlt(&mut v), SystemStep::Continue);
        assert_eq!(v.skipped, 1);
        // Halted with no timer armed: nothing can wake it.
        assert!(matches!(s.before_entry(&mut v), SystemStep::End(_)));
        // PIC at 0x30, IRQ 0 unmasked, PIT at 1 kHz: the halted guest wakes with 0x30.
        let mut s = FullSystem::default();
        for (port, val) in [
            (0x20u16, 0x11u64),
            (0x21, 0x30),
            (0x21, 4),
            (0x21, 1),
            (0x21, 0xFE),
            (0x43, 0x34),
            (0x40, 0xA9),
            (0x40, 0x04),
        ] {
            v.set_reg(Reg::Rax, val);
            assert_eq!(s.io(&mut v, port, 1, true, false), SystemStep::Continue);
        }
        assert_eq!(s.hlt(&mut v), SystemStep::Continue);
        let mut steps = 0;
        while s.before_entry(&mut v) == SystemStep::Wait {
            steps += 1;
            assert!(steps < 10_000, "never woke");
        }
        assert_eq!(v.interrupts, [0x30]);
    }

    #[test]
    fn io_reads_merge_into_rax_and_refusals_end() {
        let mut s = FullSystem::default();
        let mut v = ScriptedVcpu::new(Vec::new());
        v.set_reg(Reg::Rax, 0x1234_5678_9ABC_DEF0);
        assert_eq!(s.io(&mut v, 0x3FD, 1, false, false), SystemStep::Continue);
        assert_eq!(v.reg(Reg::Rax), 0x1234_5678_9ABC_DE60);
        assert_eq!(s.io(&mut v, 0xCFC, 4, false, false), SystemStep::Continue);
        assert_eq!(v.reg(Reg::Rax), 0xFFFF_FFFF);
        v.set_reg(Reg::Rax, u64::from(b'x'));
        assert_eq!(
            s.io(&mut v, 0x3F8, 1, true, false),
            SystemStep::Serial(b'x')
        );
        assert!(matches!(
            s.io(&mut v, 0x3F8, 1, true, true),
            SystemStep::End(_)
        ));
        assert!(matches!(
            s.io(&mut v, 0x1F0, 1, false, false),
            SystemStep::End(_)
        ));
        v.set_reg(Reg::Rax, 0xFE);
        assert!(matches!(
            s.io(&mut v, 0x64, 1, true, false),
            SystemStep::End(GuestEnd::Fault {
                kind: FaultKind::Shutdown,
                ..
            })
        ));
    }
}
