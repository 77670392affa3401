//! PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, 3.2.2.3.2):
//! CONFIG_ADDRESS at 0xCF8 (a 32-bit latch that reads back) and CONFIG_DATA at
//! 0xCFC-0xCFF. There is no device on the bus: every configuration read returns all
//! ones (the "no device" answer of a master abort) and writes are dropped, as a real
//! host bridge does for absent functions. Byte accesses to 0xCF8-0xCFB are not
//! mechanism #1 and read as all ones too.

/// The configuration ports.
#[derive(Debug, Clone, Default)]
pub struct PciAbsent {
    address: u32,
}

impl PciAbsent {
    /// The ports.
    pub const PORTS: core::ops::RangeInclusive<u16> = 0xCF8..=0xCFF;

    /// A read of `size` bytes.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        if port == 0xCF8 && size == 4 {
            self.address
        } else {
            u32::MAX
        }
    }

    /// A write of `size` bytes.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == 0xCF8 && size == 4 {
            self.address = value & 0x80FF_FFFC;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_latch_and_no_device() {
        let mut p = PciAbsent::default();
        p.write(0xCF8, 4, 0x8000_0000);
        assert_eq!(p.read(0xCF8, 4), 0x8000_0000);
        assert_eq!(p.read(0xCFC, 4), u32::MAX);
        assert_eq!(p.read(0xCFE, 2), u32::MAX);
        p.write(0xCFC, 4, 0);
        assert_eq!(p.read(0xCFC, 4), u32::MAX);
        assert_eq!(p.read(0xCFB, 1), u32::MAX);
    }
}
