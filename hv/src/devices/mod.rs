//! The virtual platform of a full-system guest (Linux): one module per device and the
//! port bus ([`Platform::io`]) that routes every `IN`/`OUT` to one of them.
//!
//! | ports | device |
//! |---|---|
//! | 0x20-0x21, 0xA0-0xA1 | [`pic`]: 8259A master/slave pair |
//! | 0x40-0x43, 0x61 | [`pit`]: 8254 timer, channel 2 gate/output in port B |
//! | 0x60, 0x64 | [`i8042`]: keyboard controller, the CPU reset line |
//! | 0x70-0x71 | [`cmos`]: CMOS RAM and RTC |
//! | 0x80 | POST diagnostic port: writes dropped (no POST card), reads 0xFF |
//! | 0x3F8-0x3FF | [`uart16550`]: COM1, IRQ 4 |
//! | 0xCF8-0xCFF | [`pci`]: configuration mechanism #1, no device |
//! | [`ABSENT`] | legacy devices that are not there (COM2-4, LPT, floppy, ISA DMA, VGA, ELCR, game port, Super I/O): reads all ones, writes dropped, as on a PC without them |
//!
//! Any other port, a string (`INS`/`OUTS`) access, or a wider access than the device
//! has ends the guest with the port named ([`IoOutcome::Refused`]). Interrupts go from
//! the devices (PIT channel 0 → IRQ 0, COM1 → IRQ 4) to the PIC; the VM asks
//! [`Platform::has_interrupt`] / [`Platform::acknowledge`] before each entry and the
//! vendor code only injects the vector (see `irq`).

pub mod cmos;
pub mod i8042;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod uart16550;

use alloc::format;
use alloc::string::String;
use core::ops::RangeInclusive;

use cmos::Cmos;
use i8042::{I8042, I8042Event};
use pci::PciAbsent;
use pic::PicPair;
use pit::Pit;
use uart16550::{COM1, COM1_IRQ, Uart};

/// Port ranges of legacy devices this platform does not have: COM2 (0x2F8), COM3
/// (0x3E8), COM4 (0x2E8), LPT (0x278, 0x378, 0x3BC), floppy (0x3F0-0x3F7, minus COM1),
/// the ISA DMA controllers and page registers (0x00-0x1F, 0x81-0x8F, 0xC0-0xDF), VGA
/// (0x3B0-0x3DF), the edge/level control registers (0x4D0-0x4D1), the game port
/// (0x201), the Super I/O configuration ports (0x2E-0x2F, 0x4E-0x4F). Reads return all
/// ones (the floating ISA bus), writes are dropped.
pub const ABSENT: &[RangeInclusive<u16>] = &[
    0x00..=0x1F,
    0x2E..=0x2F,
    0x4E..=0x4F,
    0x81..=0x8F,
    0xC0..=0xDF,
    0x201..=0x201,
    0x278..=0x27A,
    0x2E8..=0x2EF,
    0x2F8..=0x2FF,
    0x378..=0x37A,
    0x3B0..=0x3DF,
    0x3E8..=0x3EF,
    0x3F0..=0x3F7,
    0x4D0..=0x4D1,
];

/// The POST diagnostic port.
const POST_PORT: u16 = 0x80;

/// What one port access did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOutcome {
    /// A read's value (the low `size` bytes count).
    Read(u32),
    /// A write took effect.
    Written,
    /// A byte the guest sent on its serial line.
    Serial(u8),
    /// The guest pulled the CPU reset line (i8042).
    Reset,
    /// The access is refused; the guest ends with this reason.
    Refused(String),
}

/// The devices of one guest.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// The interrupt controllers.
    pub pic: PicPair,
    /// The timer.
    pub pit: Pit,
    /// COM1.
    pub uart: Uart,
    /// CMOS and RTC.
    pub cmos: Cmos,
    /// Keyboard controller.
    pub i8042: I8042,
    /// PCI configuration space.
    pub pci: PciAbsent,
    uart_line: bool,
}

fn refused(what: &str, port: u16, size: u8, write: bool) -> IoOutcome {
    IoOutcome::Refused(format!(
        "{} of {size} byte(s) to port {port:#x} refused: {what}",
        if write { "OUT" } else { "IN" }
    ))
}

impl Platform {
    /// Routes one access at guest time `now` (ns): `value` is what an `OUT` writes.
    pub fn io(&mut self, port: u16, size: u8, write: bool, value: u32, now: u64) -> IoOutcome {
        if PciAbsent::PORTS.contains(&port) {
            return if write {
                self.pci.write(port, size, value);
                IoOutcome::Written
            } else {
                IoOutcome::Read(self.pci.read(port, size))
            };
        }
        if ABSENT.iter().any(|r| r.contains(&port)) || port == POST_PORT {
            return if write {
                IoOutcome::Written
            } else {
                IoOutcome::Read(u32::MAX)
            };
        }
        if size != 1 {
            return refused("the device has byte registers only", port, size, write);
        }
        let byte = value as u8;
        let result = match port {
            p if PicPair::PORTS.contains(&p) => {
                if write {
                    self.pic
                        .write(p, byte)
                        .map(|()| IoOutcome::Written)
                        .map_err(|e| e.0)
                } else {
                    Ok(IoOutcome::Read(u32::from(self.pic.read(p))))
                }
            }
            p if Pit::PORTS.contains(&p) || p == Pit::PORT_B => {
                if write {
                    self.pit
                        .write(p, byte, now)
                        .map(|()| IoOutcome::Written)
                        .map_err(|e| e.0)
                } else {
                    Ok(IoOutcome::Read(u32::from(self.pit.read(p, now))))
                }
            }
            p if I8042::PORTS.contains(&p) => {
                if write {
                    match self.i8042.write(p, byte) {
                        Ok(I8042Event::Reset) => Ok(IoOutcome::Reset),
                        Ok(I8042Event::None) => Ok(IoOutcome::Written),
                        Err(_) => Err("keyboard controller command not emulated"),
                    }
                } else {
                    Ok(IoOutcome::Read(u32::from(self.i8042.read(p))))
                }
            }
            p if Cmos::PORTS.contains(&p) => {
                if write {
                    self.cmos
                        .write(p, byte)
                        .map(|()| IoOutcome::Written)
                        .map_err(|e| e.0)
                } else {
                    Ok(IoOutcome::Read(u32::from(self.cmos.read(p, now))))
                }
            }
            p if (COM1..COM1 + 8).contains(&p) => {
                let out = if write {
                    self.uart
                        .write(p - COM1, byte)
                        .map_or(IoOutcome::Written, IoOutcome::Serial)
                } else {
                    IoOutcome::Read(u32::from(self.uart.read(p - COM1)))
                };
                self.sync_uart();
                Ok(out)
            }
            _ => Err("no device at this port"),
        };
        result.unwrap_or_else(|why| refused(why, port, size, write))
    }

    /// An edge on IRQ 4 when COM1's interrupt output goes high.
    fn sync_uart(&mut self) {
        let line = self.uart.irq_line();
        if line && !self.uart_line {
            self.pic.raise(COM1_IRQ);
        }
        self.uart_line = line;
    }

    /// Lets guest time `now` act on the devices (timer expiries become IRQ 0 edges).
    pub fn poll(&mut self, now: u64) {
        if self.pit.poll_irq0(now) {
            self.pic.raise(0);
        }
    }

    /// Whether the PIC asserts INTR.
    pub fn has_interrupt(&mut self) -> bool {
        self.pic.has_interrupt()
    }

    /// The interrupt acknowledge: the vector to inject.
    pub fn acknowledge(&mut self) -> u8 {
        self.pic.acknowledge()
    }

    /// The guest time of the next timer event, if one is armed.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        self.pit.next_irq0(now)
    }
}

/// Test support: the master PIC initialized as Linux does (vectors 0x30-0x37, 8086
/// mode), with `mask` as its interrupt mask.
#[cfg(test)]
pub(crate) fn init_master_pic(p: &mut Platform, mask: u8) {
    for (port, v) in [
        (0x20, 0x11),
        (0x21, 0x30),
        (0x21, 4),
        (0x21, 1),
        (0x21, mask),
    ] {
        assert_eq!(p.io(port, 1, true, u32::from(v), 0), IoOutcome::Written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(p: &mut Platform, port: u16, v: u8) {
        assert_eq!(
            p.io(port, 1, true, u32::from(v), 0),
            IoOutcome::Written,
            "port {port:#x}"
        );
    }

    #[test]
    fn routes_ports_and_refuses_the_rest() {
        let mut p = Platform::default();
        assert_eq!(
            p.io(0x3F8, 1, true, u32::from(b'k'), 0),
            IoOutcome::Serial(b'k')
        );
        assert_eq!(p.io(0x3FD, 1, false, 0, 0), IoOutcome::Read(0x60));
        assert_eq!(p.io(0x2F8 + 5, 1, false, 0, 0), IoOutcome::Read(u32::MAX));
        out(&mut p, 0x80, 0x12);
        assert_eq!(p.io(0xCFC, 4, false, 0, 0), IoOutcome::Read(u32::MAX));
        assert_eq!(p.io(0x64, 1, true, 0xFE, 0), IoOutcome::Reset);
        assert!(matches!(
            p.io(0x1234, 1, false, 0, 0),
            IoOutcome::Refused(_)
        ));
        assert!(matches!(p.io(0x40, 2, false, 0, 0), IoOutcome::Refused(_)));
        assert!(matches!(
            p.io(0x43, 1, true, 0x32, 0),
            IoOutcome::Refused(_)
        ));
    }

    #[test]
    fn timer_interrupt_reaches_the_pic() {
        let mut p = Platform::default();
        init_master_pic(&mut p, 0xEE);
        out(&mut p, 0x43, 0x34);
        out(&mut p, 0x40, 0xA9);
        out(&mut p, 0x40, 0x04); // 1193 ticks: 1 ms
        p.poll(500_000);
        assert!(!p.has_interrupt());
        assert_eq!(p.next_event(500_000), Some(999_848));
        p.poll(1_000_000);
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), 0x30);
        // COM1's THRE interrupt (OUT2 and IER.ETBEI) arrives as IRQ 4 (vector 0x34).
        out(&mut p, 0x3FC, 0x08);
        out(&mut p, 0x3F9, 0x02);
        out(&mut p, 0x20, 0x20);
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), 0x34);
    }
}
