//! The CMOS RAM and real-time clock (Motorola MC146818A, ports 0x70 index / 0x71
//! data; bit 7 of the index is the NMI mask). The clock reads as a fixed start date
//! plus the guest's elapsed time, in BCD and 24-hour mode (register B = 0x02); the
//! update-in-progress bit (register A bit 7) is never set, so readers never wait.
//! Registers C (flags) read 0 and D (valid RAM and time) reads 0x80. Every other byte
//! is plain RAM. The alarm, periodic and update interrupts are not emulated: enabling
//! them in register B is refused.

/// A guest request the model does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmosError(pub &'static str);

/// Seconds from 2000-01-01 to the start date, 2026-01-01 00:00:00 (a Thursday).
const START_DAYS_SINCE_2000: u64 = 9497;

/// The 128-byte CMOS RAM with the clock.
#[derive(Debug, Clone)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
}

impl Default for Cmos {
    fn default() -> Self {
        let mut ram = [0u8; 128];
        ram[0x0A] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        ram[0x0B] = 0x02; // 24-hour, BCD, no interrupts
        ram[0x0D] = 0x80;
        Self { index: 0, ram }
    }
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// Year, month (1-12), day (1-31) of `days` since 2000-01-01.
fn civil(mut days: u64) -> (u64, u64, u64) {
    let mut year = 2000;
    loop {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let len = if leap { 366 } else { 365 };
        if days < len {
            let months = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            let mut month = 1;
            for m in months {
                if days < m {
                    break;
                }
                days -= m;
                month += 1;
            }
            return (year, month, days + 1);
        }
        days -= len;
        year += 1;
    }
}

impl Cmos {
    /// The ports.
    pub const PORTS: [u16; 2] = [0x70, 0x71];

    /// A read at guest time `now` (ns).
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        if port == 0x70 {
            return 0xFF; // the index register is write-only
        }
        let secs = now / 1_000_000_000;
        let days = START_DAYS_SINCE_2000 + secs / 86_400;
        let (year, month, day) = civil(days);
        let t = secs % 86_400;
        match self.index {
            0x00 => bcd(t % 60),
            0x02 => bcd(t / 60 % 60),
            0x04 => bcd(t / 3600),
            0x06 => bcd((days + 6) % 7 + 1), // 2000-01-01 was a Saturday (7)
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year % 100),
            0x32 => bcd(year / 100),
            0x0C => 0,
            i => self.ram[usize::from(i)],
        }
    }

    /// A write.
    pub fn write(&mut self, port: u16, value: u8) -> Result<(), CmosError> {
        if port == 0x70 {
            self.index = value & 0x7F;
            return Ok(());
        }
        match self.index {
            0x0B if value & 0x70 != 0 => Err(CmosError("RTC interrupts (register B bits 4-6)")),
            0x0B if value & 0x04 != 0 => Err(CmosError("binary clock mode (register B bit 2)")),
            0x0C | 0x0D => Ok(()), // read-only flags
            i => {
                self.ram[usize::from(i)] = value;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(c: &mut Cmos, i: u8, now: u64) -> u8 {
        c.write(0x70, i | 0x80).unwrap();
        c.read(0x71, now)
    }

    #[test]
    fn clock_counts_from_the_start_date_in_bcd() {
        let mut c = Cmos::default();
        let now = (86_400 + 3600 * 13 + 60 * 7 + 42) * 1_000_000_000;
        assert_eq!(reg(&mut c, 0x00, now), 0x42);
        assert_eq!(reg(&mut c, 0x02, now), 0x07);
        assert_eq!(reg(&mut c, 0x04, now), 0x13);
        assert_eq!(reg(&mut c, 0x07, now), 0x02);
        assert_eq!(reg(&mut c, 0x08, now), 0x01);
        assert_eq!(reg(&mut c, 0x09, now), 0x26);
        assert_eq!(reg(&mut c, 0x32, now), 0x20);
        assert_eq!(reg(&mut c, 0x06, 0), 5, "2026-01-01 is a Thursday");
        assert_eq!(reg(&mut c, 0x0A, now) & 0x80, 0, "never updating");
        assert_eq!(reg(&mut c, 0x0D, now), 0x80);
    }

    #[test]
    fn ram_bytes_and_refusals() {
        let mut c = Cmos::default();
        c.write(0x70, 0x40).unwrap();
        c.write(0x71, 0xAB).unwrap();
        assert_eq!(reg(&mut c, 0x40, 0), 0xAB);
        c.write(0x70, 0x0B).unwrap();
        assert!(c.write(0x71, 0x42).is_err());
        assert!(c.write(0x71, 0x06).is_err());
        assert_eq!(civil(59), (2000, 2, 29));
        assert_eq!(civil(366), (2001, 1, 1));
    }
}
