//! The 8042 keyboard controller (ports 0x60 data, 0x64 status/command), reduced to
//! what a guest without keyboard needs: the controller configuration byte (commands
//! 0x20/0x60), the self test (0xAA → 0x55), interface enable/disable commands, and the
//! CPU reset line: command 0xFE (pulse output port bit 0) or an output-port write
//! (0xD1) with bit 0 clear ends the guest as "reset requested", the output-buffer
//! writes 0xD2/0xD3 (the byte comes back as if from the keyboard/mouse). There is no
//! keyboard or mouse behind it: bytes sent to them go nowhere, as with none plugged in
//! (Linux is told `i8042.nokbd i8042.noaux`, so it does not wait for them). Other
//! commands are refused.

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I8042Event {
    /// Nothing visible outside.
    None,
    /// The guest pulsed the CPU reset line.
    Reset,
}

/// A guest request the model does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct I8042Error(pub u8);

/// Status register bit 0: output buffer full.
const STATUS_OBF: u8 = 1 << 0;
/// Status bit 2: system flag (set after self test); bit 3: last write was a command;
/// bit 4: keyboard not inhibited (keylock off); bit 5: output from the mouse.
const STATUS_SYS: u8 = 1 << 2;
const STATUS_CMD: u8 = 1 << 3;
const STATUS_UNLOCKED: u8 = 1 << 4;
const STATUS_AUX: u8 = 1 << 5;

/// The controller.
#[derive(Debug, Clone)]
pub struct I8042 {
    config: u8,
    output: Option<u8>,
    output_aux: bool,
    pending: Option<u8>,
    last_was_command: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        Self {
            config: 0x30, // both interfaces disabled, no interrupts
            output: None,
            output_aux: false,
            pending: None,
            last_was_command: false,
        }
    }
}

impl I8042 {
    /// The ports.
    pub const PORTS: [u16; 2] = [0x60, 0x64];

    /// A read.
    pub fn read(&mut self, port: u16) -> u8 {
        if port == 0x64 {
            let obf = if self.output.is_some() { STATUS_OBF } else { 0 };
            let cmd = if self.last_was_command { STATUS_CMD } else { 0 };
            let aux = if self.output.is_some() && self.output_aux {
                STATUS_AUX
            } else {
                0
            };
            return obf | cmd | aux | STATUS_SYS | STATUS_UNLOCKED;
        }
        self.output.take().unwrap_or(0)
    }

    /// A write.
    pub fn write(&mut self, port: u16, value: u8) -> Result<I8042Event, I8042Error> {
        self.last_was_command = port == 0x64;
        if port == 0x60 {
            return Ok(match self.pending.take() {
                Some(0x60) => {
                    self.config = value;
                    I8042Event::None
                }
                Some(0xD1) if value & 1 == 0 => I8042Event::Reset,
                Some(c @ (0xD2 | 0xD3)) => {
                    self.output = Some(value);
                    self.output_aux = c == 0xD3;
                    I8042Event::None
                }
                // Without a keyboard, bytes for it go nowhere (as with none plugged in).
                _ => I8042Event::None,
            });
        }
        self.output_aux = false;
        match value {
            0x20 => self.output = Some(self.config),
            0x60 | 0xD1 | 0xD2 | 0xD3 => self.pending = Some(value),
            0xAA => self.output = Some(0x55),
            0xA7 | 0xA8 | 0xAD | 0xAE => {}
            0xFE => return Ok(I8042Event::Reset),
            other => return Err(I8042Error(other)),
        }
        Ok(I8042Event::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_byte_and_self_test() {
        let mut k = I8042::default();
        assert_eq!(k.read(0x64) & STATUS_OBF, 0);
        k.write(0x64, 0xAA).unwrap();
        assert_eq!(k.read(0x64) & STATUS_OBF, STATUS_OBF);
        assert_eq!(k.read(0x60), 0x55);
        k.write(0x64, 0x60).unwrap();
        k.write(0x60, 0x47).unwrap();
        k.write(0x64, 0x20).unwrap();
        assert_eq!(k.read(0x60), 0x47);
        // Mouse loopback: the byte comes back flagged as mouse data.
        k.write(0x64, 0xD3).unwrap();
        k.write(0x60, 0x5A).unwrap();
        assert_eq!(
            k.read(0x64) & (STATUS_OBF | STATUS_AUX),
            STATUS_OBF | STATUS_AUX
        );
        assert_eq!(k.read(0x60), 0x5A);
        assert_eq!(k.read(0x64) & STATUS_UNLOCKED, STATUS_UNLOCKED);
    }

    #[test]
    fn reset_line() {
        let mut k = I8042::default();
        assert_eq!(k.write(0x64, 0xFE), Ok(I8042Event::Reset));
        k.write(0x64, 0xD1).unwrap();
        assert_eq!(k.write(0x60, 0x01), Ok(I8042Event::None));
        k.write(0x64, 0xD1).unwrap();
        assert_eq!(k.write(0x60, 0x00), Ok(I8042Event::Reset));
        assert_eq!(k.write(0x64, 0xC0), Err(I8042Error(0xC0)));
    }
}
