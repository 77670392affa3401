//! The 8259A programmable interrupt controller pair (master at 0x20/0x21, slave at
//! 0xA0/0xA1, cascaded on master IRQ 2), as the Intel 8259A datasheet describes it:
//! initialization words ICW1-ICW4, the mask (OCW1), end-of-interrupt commands (OCW2),
//! IRR/ISR reads (OCW3), fixed priority (IRQ 0 highest), edge-triggered inputs, and a
//! spurious IRQ 7/15 when the interrupt acknowledge finds no request.
//!
//! Not emulated (refused through [`PicError`] when a guest asks): priority rotation,
//! special mask mode, polled mode, level-triggered mode (ICW1 bit 3), 8080 mode (ICW4
//! bit 0 clear), buffered mode is accepted and has no effect.

/// A guest request the model does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PicError(pub &'static str);

/// ICW1 marker: bit 4 set on the command port (8259A datasheet, "ICW1").
const ICW1: u8 = 1 << 4;
/// ICW1 bit 0: ICW4 follows.
const ICW1_IC4: u8 = 1 << 0;
/// ICW1 bit 1: single (no cascade; ICW3 skipped).
const ICW1_SNGL: u8 = 1 << 1;
/// ICW1 bit 3: level-triggered mode.
const ICW1_LTIM: u8 = 1 << 3;
/// OCW3 marker: bits 4:3 = 01.
const OCW3_MASK: u8 = 0x18;
const OCW3: u8 = 0x08;
/// ICW4 bit 0: 8086 mode; bit 1: automatic EOI.
const ICW4_8086: u8 = 1 << 0;
const ICW4_AEOI: u8 = 1 << 1;

/// Where a chip is in its initialization sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Init {
    #[default]
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone, Default)]
pub struct Chip {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register.
    pub imr: u8,
    base: u8,
    init: Init,
    icw1: u8,
    auto_eoi: bool,
    read_isr: bool,
}

impl Chip {
    /// Highest-priority requested, unmasked IRQ that outranks every in-service one.
    fn best(&self) -> Option<u8> {
        let requests = self.irr & !self.imr;
        (0..8u8)
            .take_while(|&i| self.isr & (1 << i) == 0)
            .find(|&i| requests & (1 << i) != 0)
    }

    fn write_command(&mut self, value: u8) -> Result<(), PicError> {
        if value & ICW1 != 0 {
            if value & ICW1_LTIM != 0 {
                return Err(PicError("level-triggered mode (ICW1 bit 3)"));
            }
            *self = Self {
                icw1: value,
                init: Init::Icw2,
                ..Self::default()
            };
            return Ok(());
        }
        if value & OCW3_MASK == OCW3 {
            if value & 0x04 != 0 {
                return Err(PicError("polled mode (OCW3 bit 2)"));
            }
            if value & 0x40 != 0 {
                return Err(PicError("special mask mode (OCW3 bit 6)"));
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            return Ok(());
        }
        if value & OCW3_MASK != 0 {
            return Err(PicError("reserved command bits"));
        }
        // OCW2: bits 7:5 = R, SL, EOI.
        match value >> 5 {
            0b001 => {
                // Non-specific EOI: the highest-priority in-service IRQ.
                if let Some(i) = (0..8).find(|i| self.isr & (1 << i) != 0) {
                    self.isr &= !(1 << i);
                }
                Ok(())
            }
            0b011 => {
                self.isr &= !(1 << (value & 7));
                Ok(())
            }
            0b010 => Ok(()), // no operation
            _ => Err(PicError("priority rotation (OCW2)")),
        }
    }

    fn write_data(&mut self, value: u8) -> Result<(), PicError> {
        match self.init {
            Init::Ready => self.imr = value,
            Init::Icw2 => {
                self.base = value & 0xF8;
                self.init = if self.icw1 & ICW1_SNGL == 0 {
                    Init::Icw3
                } else if self.icw1 & ICW1_IC4 != 0 {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw3 => {
                self.init = if self.icw1 & ICW1_IC4 != 0 {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw4 => {
                if value & ICW4_8086 == 0 {
                    return Err(PicError("8080/8085 mode (ICW4 bit 0 clear)"));
                }
                if value & 0x10 != 0 {
                    return Err(PicError("special fully nested mode (ICW4 bit 4)"));
                }
                self.auto_eoi = value & ICW4_AEOI != 0;
                self.init = Init::Ready;
            }
        }
        Ok(())
    }

    fn read_command(&self) -> u8 {
        if self.read_isr { self.isr } else { self.irr }
    }

    /// INTA: the IRQ moves from IRR to ISR (unless automatic EOI).
    fn acknowledge(&mut self, irq: u8) {
        self.irr &= !(1 << irq);
        if !self.auto_eoi {
            self.isr |= 1 << irq;
        }
    }
}

/// The master/slave pair.
#[derive(Debug, Clone)]
pub struct PicPair {
    /// The master (IRQ 0-7).
    pub master: Chip,
    /// The slave (IRQ 8-15, on master IRQ 2).
    pub slave: Chip,
}

impl Default for PicPair {
    /// As a PC BIOS leaves it: vectors 0x08 and 0x70, every input masked.
    fn default() -> Self {
        let chip = |base| Chip {
            imr: 0xFF,
            base,
            ..Chip::default()
        };
        Self {
            master: chip(0x08),
            slave: chip(0x70),
        }
    }
}

/// The cascade input of the master.
const CASCADE: u8 = 2;

impl PicPair {
    /// The ports the pair answers.
    pub const PORTS: [u16; 4] = [0x20, 0x21, 0xA0, 0xA1];

    /// An edge on input `irq` (0-15) sets its request bit.
    pub fn raise(&mut self, irq: u8) {
        if irq < 8 {
            self.master.irr |= 1 << irq;
        } else if irq < 16 {
            self.slave.irr |= 1 << (irq - 8);
        }
    }

    fn sync_cascade(&mut self) {
        if self.slave.best().is_some() {
            self.master.irr |= 1 << CASCADE;
        } else if self.master.isr & (1 << CASCADE) == 0 {
            self.master.irr &= !(1 << CASCADE);
        }
    }

    /// Whether the pair asserts INTR to the CPU.
    pub fn has_interrupt(&mut self) -> bool {
        self.sync_cascade();
        self.master.best().is_some()
    }

    /// The interrupt acknowledge cycle: the vector to deliver. With no request left
    /// (it vanished), the 8259A answers IRQ 7 of the chip without setting ISR: the
    /// spurious interrupt.
    pub fn acknowledge(&mut self) -> u8 {
        self.sync_cascade();
        match self.master.best() {
            Some(CASCADE) => {
                self.master.acknowledge(CASCADE);
                match self.slave.best() {
                    Some(irq) => {
                        self.slave.acknowledge(irq);
                        self.slave.base + irq
                    }
                    None => self.slave.base + 7,
                }
            }
            Some(irq) => {
                self.master.acknowledge(irq);
                self.master.base + irq
            }
            None => self.master.base + 7,
        }
    }

    /// A read of `port` (one of [`Self::PORTS`]).
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            0x20 => self.master.read_command(),
            0x21 => self.master.imr,
            0xA0 => self.slave.read_command(),
            _ => self.slave.imr,
        }
    }

    /// A write to `port`.
    pub fn write(&mut self, port: u16, value: u8) -> Result<(), PicError> {
        match port {
            0x20 => self.master.write_command(value),
            0x21 => self.master.write_data(value),
            0xA0 => self.slave.write_command(value),
            _ => self.slave.write_data(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's `init_8259A` sequence: master at 0x30, slave at 0x38.
    fn linux_init() -> PicPair {
        let mut p = PicPair::default();
        for (port, v) in [
            (0x21, 0xFF),
            (0xA1, 0xFF),
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xA0, 0x11),
            (0xA1, 0x38),
            (0xA1, 0x02),
            (0xA1, 0x01),
            (0x21, 0xFA), // IRQ 0 and the cascade unmasked
            (0xA1, 0xFF),
        ] {
            p.write(port, v).unwrap();
        }
        p
    }

    #[test]
    fn init_words_mask_and_vectors() {
        let mut p = linux_init();
        assert_eq!(p.read(0x21), 0xFA);
        assert_eq!(p.read(0xA1), 0xFF);
        assert!(!p.has_interrupt());
        p.raise(1); // masked
        assert!(!p.has_interrupt());
        p.raise(0);
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), 0x30);
        // IRR/ISR through OCW3.
        p.write(0x20, 0x0B).unwrap();
        assert_eq!(p.read(0x20), 0x01);
        p.write(0x20, 0x0A).unwrap();
        assert_eq!(p.read(0x20), 0x02, "IRQ 1 still requested (masked)");
    }

    #[test]
    fn in_service_blocks_lower_priority_until_eoi() {
        let mut p = linux_init();
        p.write(0x21, 0x00).unwrap();
        p.raise(3);
        assert_eq!(p.acknowledge(), 0x33);
        p.raise(5);
        assert!(!p.has_interrupt(), "IRQ 5 waits for IRQ 3's EOI");
        p.raise(1);
        assert!(p.has_interrupt(), "IRQ 1 outranks IRQ 3");
        assert_eq!(p.acknowledge(), 0x31);
        p.write(0x20, 0x20).unwrap(); // EOI: IRQ 1
        p.write(0x20, 0x63).unwrap(); // specific EOI: IRQ 3
        assert_eq!(p.acknowledge(), 0x35);
    }

    #[test]
    fn slave_irq_goes_through_the_cascade() {
        let mut p = linux_init();
        p.write(0xA1, 0xFE).unwrap(); // IRQ 8 unmasked
        p.raise(8);
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), 0x38);
        assert_eq!(p.master.isr, 1 << 2);
        assert_eq!(p.slave.isr, 1);
        p.write(0xA0, 0x20).unwrap();
        p.write(0x20, 0x20).unwrap();
        assert_eq!((p.master.isr, p.slave.isr), (0, 0));
    }

    #[test]
    fn vanished_request_gives_spurious_irq7_without_isr() {
        let mut p = linux_init();
        assert_eq!(p.acknowledge(), 0x37);
        assert_eq!(p.master.isr, 0);
        // A slave request that vanished before the acknowledge: the cascade input
        // follows the slave, so the master answers with its own IRQ 7.
        p.write(0xA1, 0x00).unwrap();
        p.raise(9);
        assert!(p.has_interrupt());
        p.slave.irr = 0;
        assert_eq!(p.acknowledge(), 0x37);
        assert_eq!((p.master.isr, p.slave.isr), (0, 0));
    }

    #[test]
    fn unsupported_modes_are_refused() {
        let mut p = PicPair::default();
        assert!(p.write(0x20, 0x19).is_err(), "level triggered");
        let mut p = linux_init();
        assert!(p.write(0x20, 0x0C).is_err(), "poll");
        assert!(p.write(0x20, 0xA0).is_err(), "rotate on EOI");
        p.write(0x20, 0x11).unwrap();
        p.write(0x21, 0x30).unwrap();
        p.write(0x21, 0x04).unwrap();
        assert!(p.write(0x21, 0x00).is_err(), "8080 mode");
    }
}
