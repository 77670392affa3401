//! A 16550A UART (National Semiconductor PC16550D datasheet) at COM1 (0x3F8-0x3FF,
//! IRQ 4). Transmitted bytes leave at once (the caller prints them with the guest's
//! prefix), so the transmitter is always empty; nothing is ever received (no input is
//! connected), so the receiver is always empty. Emulated: divisor latch (LCR.DLAB),
//! IER, IIR with the FIFO-enabled bits, FCR, LCR, MCR with loopback (MSR mirrors the
//! modem-control outputs), LSR, MSR, scratch register, and the interrupt line: a
//! "transmitter holding register empty" interrupt while IER.ETBEI is set and the
//! condition was not yet read from IIR or cleared by a write to THR.

/// COM1's first port.
pub const COM1: u16 = 0x3F8;
/// COM1's IRQ.
pub const COM1_IRQ: u8 = 4;

/// LCR bit 7: divisor latch access.
const LCR_DLAB: u8 = 1 << 7;
/// IER bit 1: THR empty interrupt; bit 0: received data; bit 2: line status; bit 3:
/// modem status.
const IER_THRE: u8 = 1 << 1;
/// MCR bit 4: loopback.
const MCR_LOOP: u8 = 1 << 4;
/// LSR bits 5 (THR empty) and 6 (transmitter empty).
const LSR_IDLE: u8 = 0x60;
/// IIR values: no interrupt pending, THR empty; bits 7:6 set when FIFOs are on.
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_FIFO: u8 = 0xC0;

/// One UART.
#[derive(Debug, Clone, Default)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scratch: u8,
    divisor: u16,
    fifo: bool,
    /// A THR-empty interrupt is pending (not yet read from IIR).
    thre_pending: bool,
}

impl Uart {
    /// A read of register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor as u8,
            0 => 0, // receiver buffer: nothing received
            1 if dlab => (self.divisor >> 8) as u8,
            1 => self.ier,
            2 => {
                let fifo = if self.fifo { IIR_FIFO } else { 0 };
                if self.thre_pending && self.ier & IER_THRE != 0 {
                    // Reading IIR clears the THR-empty source (PC16550D table 3).
                    self.thre_pending = false;
                    fifo | IIR_THRE
                } else {
                    fifo | IIR_NONE
                }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_IDLE,
            6 => self.modem_status(),
            _ => self.scratch,
        }
    }

    fn modem_status(&self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            // Loopback: CTS = RTS, DSR = DTR, RI = OUT1, DCD = OUT2.
            let m = self.mcr;
            ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
        } else {
            // A connected terminal: DCD, DSR, CTS.
            0xB0
        }
    }

    /// A write of `value` to register `offset`; returns a byte to transmit.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor = (self.divisor & 0xFF00) | u16::from(value),
            0 => {
                // Sent at once: THR is empty again, which is a new THRE event. In
                // loopback the byte goes to the (absent) receiver, not the line.
                self.thre_pending = true;
                if self.mcr & MCR_LOOP == 0 {
                    return Some(value);
                }
            }
            1 if dlab => self.divisor = (self.divisor & 0x00FF) | (u16::from(value) << 8),
            1 => {
                // Enabling ETBEI with an empty THR raises the interrupt at once.
                if value & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = value & 0x0F;
            }
            2 => self.fifo = value & 1 != 0,
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1F,
            5 | 6 => {} // LSR and MSR are read-only (writes have no effect)
            _ => self.scratch = value,
        }
        None
    }

    /// The interrupt output (to the PIC through OUT2, as on the PC: MCR bit 3 gates it).
    pub fn irq_line(&self) -> bool {
        self.mcr & 0x08 != 0 && self.thre_pending && self.ier & IER_THRE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisor_latch_and_registers() {
        let mut u = Uart::default();
        u.write(3, 0x80);
        u.write(0, 0x01);
        u.write(1, 0x00);
        assert_eq!((u.read(0), u.read(1)), (0x01, 0x00));
        u.write(3, 0x03);
        assert_eq!(u.read(3), 0x03);
        u.write(7, 0x5A);
        assert_eq!(u.read(7), 0x5A);
        assert_eq!(u.read(5), 0x60);
        assert_eq!(u.write(0, b'A'), Some(b'A'));
    }

    #[test]
    fn linux_autoconfig_probes_pass() {
        let mut u = Uart::default();
        // IER test: 0 then 0x0F reads back.
        u.write(1, 0);
        assert_eq!(u.read(1) & 0x0F, 0);
        u.write(1, 0x0F);
        assert_eq!(u.read(1) & 0x0F, 0x0F);
        u.write(1, 0);
        // Loopback test: MCR = LOOP | 0x0A, MSR high nibble must be 0x90.
        u.write(4, MCR_LOOP | 0x0A);
        assert_eq!(u.read(6) & 0xF0, 0x90);
        assert_eq!(u.write(0, b'x'), None, "loopback keeps bytes off the line");
        u.write(4, 0);
        // FIFO: IIR bits 7:6 = 11 identifies a 16550A.
        u.write(2, 0x01);
        assert_eq!(u.read(2) & 0xC0, 0xC0);
    }

    #[test]
    fn thre_interrupt_until_iir_read_or_thr_written() {
        let mut u = Uart::default();
        u.write(4, 0x08); // OUT2: interrupts reach the PIC
        assert!(!u.irq_line());
        u.write(1, IER_THRE);
        assert!(u.irq_line());
        assert_eq!(u.read(2) & 0x0F, IIR_THRE);
        assert!(!u.irq_line());
        assert_eq!(u.read(2) & 0x0F, IIR_NONE);
        u.write(0, b'a');
        assert!(u.irq_line());
        u.write(1, 0);
        assert!(!u.irq_line());
        // Without OUT2 the line stays low.
        u.write(4, 0);
        u.write(1, IER_THRE);
        assert!(!u.irq_line());
    }
}
