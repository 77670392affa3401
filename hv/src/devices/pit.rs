//! The 8254 programmable interval timer (ports 0x40-0x43) and the gate/output bits of
//! channel 2 in system control port B (0x61), as the Intel 8254 datasheet and the
//! IBM PC/AT technical reference describe them.
//!
//! Time is the guest's clock in nanoseconds (host TSC based, see `clock`); the counters
//! run at 1.193182 MHz. Modes 0 (interrupt on terminal count), 2 (rate generator) and
//! 3 (square wave) are emulated, which are the ones Linux uses (channel 0: periodic in
//! mode 2, one-shot in mode 0; channel 2: mode 0 for TSC calibration). Read-back, latch,
//! and LSB/MSB/both access are emulated. Modes 1, 4 and 5 and BCD counting are refused.

/// The PIT input clock in Hz (IBM PC/AT: 14.31818 MHz / 12).
pub const PIT_HZ: u64 = 1_193_182;
const NS_PER_S: u64 = 1_000_000_000;

/// A guest request the model does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PitError(pub &'static str);

/// Access mode of a counter (control word bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum AccessMode {
    Low,
    High,
    #[default]
    Word,
}

/// One counter.
#[derive(Debug, Clone, Default)]
struct Channel {
    mode: u8,
    access: AccessMode,
    /// The count loaded (0 means 0x10000).
    reload: u32,
    /// Guest time (ns) when counting started, `None` before a count is written.
    start: Option<u64>,
    gate: bool,
    write_high_next: bool,
    write_low: u8,
    read_high_next: bool,
    latched: Option<u16>,
    status: Option<u8>,
    /// One-shot (mode 0) expiry already reported.
    fired: bool,
}

impl Channel {
    fn ticks_since_start(&self, now: u64) -> Option<u64> {
        let start = self.start?;
        let ns = now.saturating_sub(start);
        Some((u128::from(ns) * u128::from(PIT_HZ) / u128::from(NS_PER_S)) as u64)
    }

    fn period(&self) -> u64 {
        if self.reload == 0 {
            0x1_0000
        } else {
            u64::from(self.reload)
        }
    }

    /// The counting element now.
    fn count(&self, now: u64) -> u16 {
        let Some(t) = self.ticks_since_start(now) else {
            return self.reload as u16;
        };
        let p = self.period();
        match self.mode {
            // Counts down through 0 and wraps (datasheet: mode 0 keeps counting).
            0 => (p.wrapping_sub(t) & 0xFFFF) as u16,
            3 => {
                // Decrements by two per clock, reloading each half period.
                let half = p.div_ceil(2);
                let into = t % half;
                ((p - 2 * into) & 0xFFFE) as u16
            }
            _ => (p - t % p) as u16,
        }
    }

    /// The OUT pin now.
    fn out(&self, now: u64) -> bool {
        let Some(t) = self.ticks_since_start(now) else {
            return self.mode != 0;
        };
        let p = self.period();
        match self.mode {
            0 => t >= p,
            2 => t % p != p - 1,
            _ => t % p < p.div_ceil(2),
        }
    }

    /// Guest time of the first expiry after `now` (ns), for the periodic and one-shot
    /// modes.
    fn next_expiry(&self, now: u64) -> Option<u64> {
        let start = self.start?;
        let t = self.ticks_since_start(now)?;
        let p = self.period();
        let tick = if self.mode == 0 {
            if self.fired {
                return None;
            }
            p
        } else {
            (t / p + 1) * p
        };
        let ns = (u128::from(tick) * u128::from(NS_PER_S)).div_ceil(u128::from(PIT_HZ));
        Some(start + ns as u64)
    }
}

/// The three counters and port 0x61's channel 2 bits.
#[derive(Debug, Clone)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bits 0 (gate 2) and 1 (speaker data); the others read as status.
    port61: u8,
    /// Periods of channel 0 already turned into IRQ 0 edges.
    irq0_seen: u64,
}

impl Default for Pit {
    fn default() -> Self {
        let mut channels: [Channel; 3] = Default::default();
        channels[0].gate = true;
        channels[1].gate = true;
        Self {
            channels,
            port61: 0,
            irq0_seen: 0,
        }
    }
}

impl Pit {
    /// Ports of the 8254 itself.
    pub const PORTS: core::ops::RangeInclusive<u16> = 0x40..=0x43;
    /// System control port B.
    pub const PORT_B: u16 = 0x61;

    /// A read at guest time `now`.
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        if port == Self::PORT_B {
            // Bit 5: OUT2; bit 4: refresh toggle (flips every 15 us on the AT).
            let out2 = self.channels[2].gate && self.channels[2].out(now);
            let refresh = (now / 15_000) & 1 == 1;
            return (self.port61 & 0x03) | (u8::from(refresh) << 4) | (u8::from(out2) << 5);
        }
        let Some(c) = self.channels.get_mut(usize::from(port - 0x40)) else {
            return 0xFF; // the control port is write-only
        };
        if let Some(s) = c.status.take() {
            return s;
        }
        let value = c.latched.unwrap_or_else(|| c.count(now));
        let byte = match c.access {
            AccessMode::Low => value as u8,
            AccessMode::High => (value >> 8) as u8,
            AccessMode::Word => {
                c.read_high_next = !c.read_high_next;
                if c.read_high_next {
                    value as u8
                } else {
                    (value >> 8) as u8
                }
            }
        };
        if c.access != AccessMode::Word || !c.read_high_next {
            c.latched = None;
        }
        byte
    }

    /// A write at guest time `now`.
    pub fn write(&mut self, port: u16, value: u8, now: u64) -> Result<(), PitError> {
        if port == Self::PORT_B {
            let gate_was = self.channels[2].gate;
            self.port61 = value & 0x03;
            let c = &mut self.channels[2];
            c.gate = value & 1 != 0;
            // A rising gate restarts the count (modes 1 and 5 trigger; Linux relies on
            // it for mode 0 only in combination with a fresh count, which restarts too).
            if c.gate && !gate_was && c.start.is_some() {
                c.start = Some(now);
                c.fired = false;
            }
            return Ok(());
        }
        if port == 0x43 {
            return self.control(value, now);
        }
        let index = usize::from(port - 0x40);
        let c = &mut self.channels[index];
        let reload = match c.access {
            AccessMode::Low => u32::from(value),
            AccessMode::High => u32::from(value) << 8,
            AccessMode::Word => {
                c.write_high_next = !c.write_high_next;
                if c.write_high_next {
                    c.write_low = value;
                    return Ok(());
                }
                u32::from(c.write_low) | (u32::from(value) << 8)
            }
        };
        c.reload = reload;
        c.start = Some(now);
        c.fired = false;
        if index == 0 {
            self.irq0_seen = 0;
        }
        Ok(())
    }

    fn control(&mut self, value: u8, now: u64) -> Result<(), PitError> {
        let select = value >> 6;
        if select == 3 {
            // Read-back (8254 datasheet): bit 5 clear = latch count, bit 4 clear =
            // latch status, bits 1-3 select the counters.
            for i in 0..3 {
                if value & (2 << i) == 0 {
                    continue;
                }
                let c = &mut self.channels[i];
                if value & 0x20 == 0 && c.latched.is_none() {
                    c.latched = Some(c.count(now));
                    c.read_high_next = false;
                }
                if value & 0x10 == 0 && c.status.is_none() {
                    let access = match c.access {
                        AccessMode::Low => 1,
                        AccessMode::High => 2,
                        AccessMode::Word => 3,
                    };
                    let out = u8::from(c.out(now)) << 7;
                    let null = u8::from(c.start.is_none()) << 6;
                    c.status = Some(out | null | (access << 4) | (c.mode << 1));
                }
            }
            return Ok(());
        }
        let c = &mut self.channels[usize::from(select)];
        let access = (value >> 4) & 3;
        if access == 0 {
            // Counter latch command.
            if c.latched.is_none() {
                c.latched = Some(c.count(now));
                c.read_high_next = false;
            }
            return Ok(());
        }
        if value & 1 != 0 {
            return Err(PitError("BCD counting"));
        }
        let mode = match (value >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        if !matches!(mode, 0 | 2 | 3) {
            return Err(PitError("counter modes 1, 4 and 5"));
        }
        *c = Channel {
            mode,
            access: match access {
                1 => AccessMode::Low,
                2 => AccessMode::High,
                _ => AccessMode::Word,
            },
            gate: c.gate,
            ..Channel::default()
        };
        if select == 0 {
            self.irq0_seen = 0;
        }
        Ok(())
    }

    /// Whether channel 0 expired since the last call (an edge on IRQ 0).
    pub fn poll_irq0(&mut self, now: u64) -> bool {
        let c = &mut self.channels[0];
        let Some(t) = c.ticks_since_start(now) else {
            return false;
        };
        let p = c.period();
        if c.mode == 0 {
            if !c.fired && t >= p {
                c.fired = true;
                return true;
            }
            return false;
        }
        let periods = t / p;
        if periods > self.irq0_seen {
            // Lost periods coalesce into one edge, as on a busy real machine.
            self.irq0_seen = periods;
            return true;
        }
        false
    }

    /// Guest time of channel 0's next expiry, if it is armed.
    pub fn next_irq0(&self, now: u64) -> Option<u64> {
        self.channels[0].next_expiry(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn periodic_channel0_rate_generator() {
        let mut p = Pit::default();
        // Linux: mode 2, lobyte/hibyte, LATCH for HZ = 250 (4773 ticks, 4 ms).
        p.write(0x43, 0x34, 0).unwrap();
        p.write(0x40, (4773 & 0xFF) as u8, 0).unwrap();
        p.write(0x40, (4773 >> 8) as u8, 0).unwrap();
        assert!(!p.poll_irq0(3 * MS));
        assert_eq!(p.next_irq0(3 * MS), Some(4_000_228));
        assert!(p.poll_irq0(4 * MS + 500));
        assert!(!p.poll_irq0(5 * MS));
        // Three periods late: one edge (coalesced), then on schedule again.
        assert!(p.poll_irq0(17 * MS));
        assert!(!p.poll_irq0(19 * MS));
        assert!(p.poll_irq0(20 * MS + MS / 2));
    }

    #[test]
    fn oneshot_mode0_fires_once() {
        let mut p = Pit::default();
        p.write(0x43, 0x30, 0).unwrap();
        p.write(0x40, 0x9C, 0).unwrap(); // 1180 ticks, about 0.99 ms
        p.write(0x40, 0x04, 0).unwrap();
        assert!(!p.poll_irq0(MS / 2));
        assert!(p.poll_irq0(MS));
        assert!(!p.poll_irq0(3 * MS));
        assert_eq!(p.next_irq0(3 * MS), None);
    }

    #[test]
    fn latch_and_word_reads_count_down() {
        let mut p = Pit::default();
        p.write(0x43, 0x34, 0).unwrap();
        p.write(0x40, 0x00, 0).unwrap();
        p.write(0x40, 0x10, 0).unwrap(); // 0x1000
        p.write(0x43, 0x00, 838 * 100).unwrap(); // latch after ~100 ticks
        let lo = p.read(0x40, 10 * MS);
        let hi = p.read(0x40, 10 * MS);
        let v = u16::from(lo) | (u16::from(hi) << 8);
        assert!((0x1000 - 101..=0x1000 - 99).contains(&v), "{v:#x}");
        // Read-back of status: OUT high, mode 2, access 3.
        p.write(0x43, 0xE2, 10 * MS).unwrap();
        assert_eq!(p.read(0x40, 10 * MS) & 0x3F, (3 << 4) | (2 << 1));
    }

    #[test]
    fn channel2_gated_by_port_61_for_calibration() {
        let mut p = Pit::default();
        // Linux's pit_calibrate_tsc: gate high, speaker off, mode 0, 50 ms.
        p.write(0x61, 0x01, 0).unwrap();
        p.write(0x43, 0xB0, 0).unwrap();
        p.write(0x42, (59659 & 0xFF) as u8, 0).unwrap();
        p.write(0x42, (59659 >> 8) as u8, 0).unwrap();
        assert_eq!(p.read(0x61, 49 * MS) & 0x20, 0);
        assert_eq!(p.read(0x61, 51 * MS) & 0x20, 0x20);
        assert_eq!(p.read(0x61, 51 * MS) & 0x03, 0x01);
        // quick_pit_calibrate reads the MSB in mode 0 with access "MSB only".
        p.write(0x43, 0xA0, 0).unwrap(); // channel 2, MSB only, mode 0
        p.write(0x42, 0xFF, 0).unwrap();
        let a = p.read(0x42, MS);
        let b = p.read(0x42, 5 * MS);
        assert!(b < a, "{a} then {b}");
    }

    #[test]
    fn refuses_unemulated_modes() {
        let mut p = Pit::default();
        assert!(p.write(0x43, 0x32, 0).is_err(), "mode 1");
        assert!(p.write(0x43, 0x35, 0).is_err(), "BCD");
        assert!(p.write(0x43, 0x38, 0).is_err(), "mode 4");
    }
}
