//! The COM1 serial console (16550 UART at I/O port 0x3f8) and the `log` back-end.

use core::fmt::{self, Write};

use spin::Mutex;
use x86_64::instructions::port::Port;

/// COM1 base I/O port.
const COM1: u16 = 0x3f8;
/// Line status register offset; bit 5 = transmit holding register empty, bit 6 =
/// transmitter idle (16550 datasheet, LSR).
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_IDLE: u8 = 1 << 6;

/// A 16550 UART driven by polling.
pub struct Uart {
    base: u16,
}

impl Uart {
    fn out(&self, offset: u16, value: u8) {
        let mut port = Port::<u8>::new(self.base + offset);
        // SAFETY: the UART registers of COM1 have no memory side effects.
        unsafe { port.write(value) };
    }

    fn inb(&self, offset: u16) -> u8 {
        let mut port = Port::<u8>::new(self.base + offset);
        // SAFETY: reading a UART register has no memory side effects.
        unsafe { port.read() }
    }

    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
    fn init(&self) {
        self.out(1, 0x00); // IER: no interrupts
        self.out(3, 0x80); // LCR: DLAB
        self.out(0, 0x01); // divisor low: 115200
        self.out(1, 0x00); // divisor high
        self.out(3, 0x03); // LCR: 8N1
        self.out(2, 0xC7); // FCR: enable and clear FIFOs
        self.out(4, 0x03); // MCR: DTR, RTS
    }

    fn write_byte(&self, byte: u8) {
        let mut spins = 0u32;
        while self.inb(LSR) & LSR_THR_EMPTY == 0 && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        self.out(0, byte);
    }

    /// Waits until the last byte has left the UART (an emulator that stops right after
    /// may otherwise drop it).
    fn drain(&self) {
        let mut spins = 0u32;
        while self.inb(LSR) & LSR_IDLE == 0 && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}

static CONSOLE: Mutex<Uart> = Mutex::new(Uart { base: COM1 });

/// Initializes the UART and installs the logger at `level`.
pub fn init(level: log::LevelFilter) {
    CONSOLE.lock().init();
    // A second call only fails to replace the logger: the level still applies.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Changes the log level (after the command line is parsed).
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Writes formatted text to the console.
pub fn print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Writes formatted text even if the console lock is held (panic and exception paths,
/// where the holder will never run again).
pub fn print_forced(args: fmt::Arguments<'_>) {
    let mut uart = Uart { base: COM1 };
    let _ = uart.write_fmt(args);
}

/// Waits until everything written has been sent.
pub fn drain() {
    Uart { base: COM1 }.drain();
}

/// Prints to the console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::kernel::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {
        $crate::kernel::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match record.level() {
            log::Level::Info => print(format_args!("[hv] {}\n", record.args())),
            level => print(format_args!("[hv {level}] {}\n", record.args())),
        }
    }

    fn flush(&self) {}
}

/// The console as a [`hv::platform::Console`] for guest output and reports.
pub struct KernelConsole;

impl hv::platform::Console for KernelConsole {
    fn write_fmt_line(&mut self, args: fmt::Arguments<'_>) {
        print(format_args!("{args}\n"));
    }
}
