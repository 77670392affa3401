//! Loading a Linux bzImage by the Linux/x86 boot protocol (the kernel's
//! `Documentation/arch/x86/boot.rst`, "THE LINUX/x86 BOOT PROTOCOL"): the setup header
//! is parsed and validated, the protected-mode kernel is placed at its preferred
//! address, and the zero page (`struct boot_params`, `arch/x86/include/uapi/asm/
//! bootparam.h`) is built with the e820 map, the command line and the initrd. The
//! guest enters at the 64-bit entry point (load address + 0x200) with RSI = the zero
//! page, on identity page tables ("64-bit BOOT PROTOCOL").
//!
//! Everything here is pure: [`LinuxImage::parse`] refuses a malformed or truncated
//! bzImage, [`plan`] checks that kernel, initrd and boot data fit the guest's RAM, and
//! [`zero_page`] builds the bytes; nothing is written to a guest before all of it passed.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Offsets in the bzImage / zero page (boot.rst, "THE REAL-MODE KERNEL HEADER").
mod off {
    pub const SETUP_SECTS: usize = 0x1F1;
    /// `syssize`: the protected-mode code's size in 16-byte paragraphs (2.04+: u32).
    pub const SYSSIZE: usize = 0x1F4;
    pub const BOOT_FLAG: usize = 0x1FE;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21C;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// `boot_params.ext_ramdisk_image` / `ext_ramdisk_size` / `ext_cmd_line_ptr`.
    pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
    /// `boot_params.e820_entries` and `boot_params.e820_table` (20-byte entries).
    pub const E820_ENTRIES: usize = 0x1E8;
    pub const E820_TABLE: usize = 0x2D0;
}

/// `boot_flag` value (boot.rst: "0xAA55 magic number").
const BOOT_FLAG: u16 = 0xAA55;
/// `header` value: "HdrS".
const HEADER_MAGIC: u32 = 0x5372_6448;
/// Oldest boot protocol accepted: 2.12 brings `xloadflags` (64-bit entry) and is the
/// first with everything used here (`pref_address`, `init_size` are 2.10).
pub const MIN_PROTOCOL: u16 = 0x020C;
/// `loadflags` bit 0, LOADED_HIGH: the protected-mode code loads at 0x100000.
const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit 0, XLF_KERNEL_64: the kernel has the 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// The 64-bit entry point's offset from the load address (boot.rst, "64-bit BOOT
/// PROTOCOL").
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// `type_of_loader`: 0xFF, "undefined" (boot.rst: loaders without an assigned id).
const LOADER_UNDEFINED: u8 = 0xFF;
/// End of the setup-header area of `struct boot_params` (`_pad7` follows).
const HEADER_AREA_END: usize = 0x280;
/// Size of `struct boot_params` (the zero page).
pub const ZERO_PAGE_SIZE: usize = 4096;
/// Most e820 entries the zero page holds (`E820_MAX_ENTRIES_ZEROPAGE`).
const E820_MAX: usize = 128;
/// e820 types (ACPI 6.4, 15.1 "Address Range Types"): usable RAM and reserved.
pub const E820_RAM: u32 = 1;
/// Reserved e820 range.
pub const E820_RESERVED: u32 = 2;

/// Why a bzImage or initrd is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinuxError {
    /// Shorter than the setup header or than the setup sectors it announces.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        len: usize,
    },
    /// `boot_flag` is not 0xAA55.
    BadBootFlag(u16),
    /// `header` is not "HdrS".
    NotBzImage(u32),
    /// The boot protocol is older than [`MIN_PROTOCOL`].
    OldProtocol(u16),
    /// `loadflags` lacks LOADED_HIGH (a zImage).
    NotLoadedHigh,
    /// `xloadflags` lacks XLF_KERNEL_64.
    No64BitEntry,
    /// `kernel_alignment` is not a power of two, or `pref_address` not aligned to it.
    BadAlignment {
        /// `kernel_alignment`.
        alignment: u32,
        /// `pref_address`.
        pref_address: u64,
    },
    /// The command line is longer than `cmdline_size` (or the page it goes to).
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The most the kernel takes.
        max: usize,
    },
    /// The initrd is empty or not a cpio/compressed archive.
    BadInitrd(&'static str),
    /// Kernel (`init_size`), initrd and boot data do not fit the guest's RAM.
    DoesNotFit {
        /// What does not fit.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, len } => {
                write!(
                    f,
                    "bzImage truncated: {len} bytes, at least {needed} needed"
                )
            }
            Self::BadBootFlag(v) => write!(f, "not a bzImage: boot flag {v:#06x}, not 0xaa55"),
            Self::NotBzImage(v) => write!(f, "not a bzImage: header {v:#010x}, not \"HdrS\""),
            Self::OldProtocol(v) => write!(
                f,
                "boot protocol {}.{:02} is older than {}.{:02}",
                v >> 8,
                v & 0xFF,
                MIN_PROTOCOL >> 8,
                MIN_PROTOCOL & 0xFF
            ),
            Self::NotLoadedHigh => write!(f, "kernel does not load high (LOADED_HIGH clear)"),
            Self::No64BitEntry => write!(f, "kernel has no 64-bit entry (XLF_KERNEL_64 clear)"),
            Self::BadAlignment {
                alignment,
                pref_address,
            } => write!(
                f,
                "bad kernel_alignment {alignment:#x} / pref_address {pref_address:#x}"
            ),
            Self::CmdlineTooLong { len, max } => {
                write!(f, "command line of {len} bytes, the kernel takes {max}")
            }
            Self::BadInitrd(why) => write!(f, "initrd refused: {why}"),
            Self::DoesNotFit {
                what,
                needed,
                available,
            } => write!(
                f,
                "{what} does not fit: {needed:#x} bytes needed, {available:#x} available"
            ),
        }
    }
}

fn u8_at(b: &[u8], o: usize) -> u8 {
    b[o]
}
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}
fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// A validated bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxImage {
    /// Boot protocol version (`0x020F` = 2.15).
    pub protocol: u16,
    /// Offset of the protected-mode kernel in the file ((setup_sects + 1) * 512).
    pub kernel_offset: usize,
    /// `kernel_alignment`.
    pub alignment: u64,
    /// `pref_address`: where the kernel wants to be loaded.
    pub pref_address: u64,
    /// `init_size`: bytes the kernel needs from its load address to decompress.
    pub init_size: u64,
    /// `initrd_addr_max`: highest address the initrd's last byte may have.
    pub initrd_addr_max: u64,
    /// `cmdline_size`: longest command line, without the NUL.
    pub cmdline_size: usize,
    /// End of the setup header (it starts at 0x1F1), copied to the zero page.
    header_end: usize,
}

impl LinuxImage {
    /// Parses and validates the setup header of `image`.
    pub fn parse(image: &[u8]) -> Result<Self, LinuxError> {
        let min = off::INIT_SIZE + 4;
        if image.len() < min {
            return Err(LinuxError::Truncated {
                needed: min,
                len: image.len(),
            });
        }
        let flag = u16_at(image, off::BOOT_FLAG);
        if flag != BOOT_FLAG {
            return Err(LinuxError::BadBootFlag(flag));
        }
        let magic = u32_at(image, off::HEADER);
        if magic != HEADER_MAGIC {
            return Err(LinuxError::NotBzImage(magic));
        }
        let protocol = u16_at(image, off::VERSION);
        if protocol < MIN_PROTOCOL {
            return Err(LinuxError::OldProtocol(protocol));
        }
        if u8_at(image, off::LOADFLAGS) & LOADED_HIGH == 0 {
            return Err(LinuxError::NotLoadedHigh);
        }
        if u16_at(image, off::XLOADFLAGS) & XLF_KERNEL_64 == 0 {
            return Err(LinuxError::No64BitEntry);
        }
        let alignment = u32_at(image, off::KERNEL_ALIGNMENT);
        let pref_address = u64_at(image, off::PREF_ADDRESS);
        if !alignment.is_power_of_two()
            || alignment < 4096
            || !pref_address.is_multiple_of(u64::from(alignment))
        {
            return Err(LinuxError::BadAlignment {
                alignment,
                pref_address,
            });
        }
        // setup_sects == 0 means 4 (boot.rst, "setup_sects").
        let sects = match u8_at(image, off::SETUP_SECTS) {
            0 => 4,
            n => usize::from(n),
        };
        let kernel_offset = (sects + 1) * 512;
        // The header ends at 0x202 + the jump's offset byte (boot.rst); never past
        // `boot_params`' header area (0x1F1..0x280) into the fields that follow.
        let header_end =
            (off::HEADER + usize::from(u8_at(image, off::JUMP + 1))).min(HEADER_AREA_END);
        // The protected-mode code is `syssize` paragraphs long: a shorter file was cut.
        let syssize = u32_at(image, off::SYSSIZE) as usize * 16;
        let needed = kernel_offset.max(header_end) + syssize.max(1);
        if image.len() < needed {
            return Err(LinuxError::Truncated {
                needed,
                len: image.len(),
            });
        }
        Ok(Self {
            protocol,
            kernel_offset,
            alignment: u64::from(alignment),
            pref_address,
            init_size: u64::from(u32_at(image, off::INIT_SIZE)),
            initrd_addr_max: u64::from(u32_at(image, off::INITRD_ADDR_MAX)),
            cmdline_size: u32_at(image, off::CMDLINE_SIZE) as usize,
            header_end,
        })
    }

    /// Whether the kernel may be loaded elsewhere than `pref_address`.
    pub fn relocatable(image: &[u8]) -> bool {
        image.get(off::RELOCATABLE).is_some_and(|&b| b != 0)
    }
}

/// Checks an initrd: not empty, and starting like a cpio "newc" archive or a
/// compressed stream the stock kernel unpacks (gzip, xz, zstd).
pub fn check_initrd(initrd: &[u8]) -> Result<(), LinuxError> {
    const KNOWN: [&[u8]; 5] = [
        b"070701",
        b"070702",
        &[0x1F, 0x8B],
        &[0xFD, b'7', b'z', b'X', b'Z'],
        &[0x28, 0xB5, 0x2F, 0xFD],
    ];
    if initrd.is_empty() {
        return Err(LinuxError::BadInitrd("empty"));
    }
    if !KNOWN.iter().any(|m| initrd.starts_with(m)) {
        return Err(LinuxError::BadInitrd(
            "neither a cpio newc archive nor gzip/xz/zstd data",
        ));
    }
    if initrd.starts_with(&[0x1F, 0x8B]) && initrd.len() < 18 {
        return Err(LinuxError::BadInitrd("gzip stream truncated"));
    }
    Ok(())
}

/// Guest-physical placement of everything, below 1 MiB for boot data.
pub mod layout {
    /// The zero page (after the identity page tables at 0x1000..0x7000).
    pub const ZERO_PAGE: u64 = 0x7000;
    /// The command line (up to 4 KiB with its NUL).
    pub const CMDLINE: u64 = 0x8000;
    /// Largest command line here (one page with its NUL).
    pub const CMDLINE_MAX: usize = 4095;
    /// RSP at entry (the kernel sets up its own stack at once; this one is valid RAM).
    pub const STACK_TOP: u64 = 0x9_0000;
    /// End of low RAM: the legacy hole (VGA memory and ROMs) follows, up to 1 MiB.
    pub const LOW_RAM_END: u64 = 0xA_0000;
    /// Start of high RAM.
    pub const HIGH_RAM_START: u64 = 0x10_0000;
}

/// Where kernel and initrd go in a guest with `mem` bytes of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Load address of the protected-mode kernel.
    pub kernel: u64,
    /// 64-bit entry point.
    pub entry: u64,
    /// Initrd address (page aligned).
    pub initrd: u64,
    /// Initrd size.
    pub initrd_size: u64,
}

/// Places the kernel at `pref_address` (its decompression needs `init_size` bytes
/// from there) and the initrd at the top of RAM below `initrd_addr_max`.
pub fn plan(
    image: &LinuxImage,
    kernel_bytes: u64,
    initrd_size: u64,
    mem: u64,
) -> Result<Plan, LinuxError> {
    let kernel = image.pref_address.max(layout::HIGH_RAM_START);
    let kernel_end = kernel + image.init_size.max(kernel_bytes);
    let top = mem.min(image.initrd_addr_max.saturating_add(1));
    let initrd = top.saturating_sub(initrd_size) & !0xFFF;
    if kernel_end > initrd || initrd_size > top {
        return Err(LinuxError::DoesNotFit {
            what: "kernel (init_size) and initrd",
            needed: kernel_end - layout::HIGH_RAM_START + initrd_size,
            available: top.saturating_sub(layout::HIGH_RAM_START),
        });
    }
    Ok(Plan {
        kernel,
        entry: kernel + ENTRY_64_OFFSET,
        initrd,
        initrd_size,
    })
}

/// The e820 map of a Linux guest with `mem` bytes of RAM: low RAM, the reserved
/// legacy hole (EBDA, VGA, ROMs), RAM from 1 MiB.
pub fn e820(mem: u64) -> Vec<(u64, u64, u32)> {
    vec![
        (0, layout::LOW_RAM_END, E820_RAM),
        (
            layout::LOW_RAM_END,
            layout::HIGH_RAM_START - layout::LOW_RAM_END,
            E820_RESERVED,
        ),
        (
            layout::HIGH_RAM_START,
            mem - layout::HIGH_RAM_START,
            E820_RAM,
        ),
    ]
}

/// The zero page: the image's setup header with the loader's fields filled in
/// (type_of_loader, cmd_line_ptr, ramdisk), and the e820 map.
pub fn zero_page(
    bz_image: &[u8],
    image: &LinuxImage,
    plan: &Plan,
    cmdline: &str,
    e820: &[(u64, u64, u32)],
) -> Result<Vec<u8>, LinuxError> {
    let max = image.cmdline_size.min(layout::CMDLINE_MAX);
    if cmdline.len() > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut zp = vec![0u8; ZERO_PAGE_SIZE];
    zp[off::SETUP_SECTS..image.header_end]
        .copy_from_slice(&bz_image[off::SETUP_SECTS..image.header_end]);
    zp[off::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    put_u32(&mut zp, off::CMD_LINE_PTR, layout::CMDLINE as u32);
    put_u32(&mut zp, off::EXT_CMD_LINE_PTR, 0);
    put_u32(&mut zp, off::RAMDISK_IMAGE, plan.initrd as u32);
    put_u32(&mut zp, off::RAMDISK_SIZE, plan.initrd_size as u32);
    put_u32(&mut zp, off::EXT_RAMDISK_IMAGE, (plan.initrd >> 32) as u32);
    put_u32(
        &mut zp,
        off::EXT_RAMDISK_SIZE,
        (plan.initrd_size >> 32) as u32,
    );
    let entries = e820.iter().take(E820_MAX);
    for (i, &(addr, size, kind)) in entries.enumerate() {
        let at = off::E820_TABLE + i * 20;
        put_u64(&mut zp, at, addr);
        put_u64(&mut zp, at + 8, size);
        put_u32(&mut zp, at + 16, kind);
    }
    zp[off::E820_ENTRIES] = e820.len().min(E820_MAX) as u8;
    // The header's loader-facing fields stay as the kernel declared them; the heap
    // pointer (real-mode setup only) is irrelevant for the 64-bit entry.
    put_u16(&mut zp, off::BOOT_FLAG, BOOT_FLAG);
    Ok(zp)
}

/// A Linux guest ready to load: everything validated, the zero page built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The parsed header.
    pub image: LinuxImage,
    /// Placement.
    pub plan: Plan,
    /// The zero page.
    pub zero_page: Vec<u8>,
    /// The command line with its NUL.
    pub cmdline: Vec<u8>,
    /// The initrd.
    pub initrd: Vec<u8>,
}

impl LinuxBoot {
    /// Validates `bz_image` and `initrd` and plans a guest of `mem` bytes of RAM.
    pub fn new(
        bz_image: &[u8],
        initrd: Vec<u8>,
        cmdline: &str,
        mem: u64,
    ) -> Result<Self, LinuxError> {
        let image = LinuxImage::parse(bz_image)?;
        check_initrd(&initrd)?;
        let kernel = kernel_bytes(bz_image, &image).len() as u64;
        let plan = plan(&image, kernel, initrd.len() as u64, mem)?;
        let zero_page = zero_page(bz_image, &image, &plan, cmdline, &e820(mem))?;
        let mut line = Vec::from(cmdline.as_bytes());
        line.push(0);
        Ok(Self {
            image,
            plan,
            zero_page,
            cmdline: line,
            initrd,
        })
    }

    /// What to write into the guest: `(gpa, bytes)` for the zero page, the command
    /// line, the protected-mode kernel of `bz_image` and the initrd.
    pub fn writes<'a>(&'a self, bz_image: &'a [u8]) -> [(u64, &'a [u8]); 4] {
        [
            (layout::ZERO_PAGE, &self.zero_page),
            (layout::CMDLINE, &self.cmdline),
            (self.plan.kernel, kernel_bytes(bz_image, &self.image)),
            (self.plan.initrd, &self.initrd),
        ]
    }
}

/// The protected-mode kernel (everything after the setup sectors).
pub fn kernel_bytes<'a>(bz_image: &'a [u8], image: &LinuxImage) -> &'a [u8] {
    &bz_image[image.kernel_offset..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: 4 setup sectors after the boot sector, protocol 2.15.
    fn bz(kernel: usize) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512 + kernel];
        b[off::SETUP_SECTS] = 4;
        put_u16(&mut b, off::BOOT_FLAG, BOOT_FLAG);
        b[off::JUMP] = 0xEB;
        b[off::JUMP + 1] = 0x6A; // header ends at 0x26C
        put_u32(&mut b, off::HEADER, HEADER_MAGIC);
        put_u16(&mut b, off::VERSION, 0x020F);
        b[off::LOADFLAGS] = LOADED_HIGH;
        put_u32(&mut b, off::INITRD_ADDR_MAX, 0x7FFF_FFFF);
        put_u32(&mut b, off::KERNEL_ALIGNMENT, 0x20_0000);
        b[off::RELOCATABLE] = 1;
        put_u16(&mut b, off::XLOADFLAGS, 0x7F);
        put_u32(&mut b, off::CMDLINE_SIZE, 2047);
        put_u64(&mut b, off::PREF_ADDRESS, 0x100_0000);
        put_u32(&mut b, off::INIT_SIZE, 0x200_0000);
        put_u32(&mut b, off::SYSSIZE, (kernel / 16) as u32);
        b
    }

    #[test]
    fn parses_a_valid_header() {
        let b = bz(4096);
        let i = LinuxImage::parse(&b).unwrap();
        assert_eq!(i.protocol, 0x020F);
        assert_eq!(i.kernel_offset, 5 * 512);
        assert_eq!(i.pref_address, 0x100_0000);
        assert_eq!(i.init_size, 0x200_0000);
        assert_eq!(kernel_bytes(&b, &i).len(), 4096);
        assert!(LinuxImage::relocatable(&b));
    }

    #[test]
    fn refuses_every_malformed_header() {
        let good = bz(4096);
        type Damage = fn(&mut Vec<u8>);
        let cases: [(Damage, LinuxError); 7] = [
            (
                |b| b.truncate(0x100),
                LinuxError::Truncated {
                    needed: 0x264,
                    len: 0x100,
                },
            ),
            (
                |b| b.truncate(5 * 512 + 100),
                LinuxError::Truncated {
                    needed: 5 * 512 + 4096,
                    len: 5 * 512 + 100,
                },
            ),
            (|b| b[off::BOOT_FLAG] = 0, LinuxError::BadBootFlag(0xAA00)),
            (
                |b| b[off::HEADER] = b'X',
                LinuxError::NotBzImage(0x5372_6458),
            ),
            (
                |b| put_u16(b, off::VERSION, 0x020B),
                LinuxError::OldProtocol(0x020B),
            ),
            (|b| b[off::LOADFLAGS] = 0, LinuxError::NotLoadedHigh),
            (|b| put_u16(b, off::XLOADFLAGS, 0), LinuxError::No64BitEntry),
        ];
        for (damage, want) in cases {
            let mut b = good.clone();
            damage(&mut b);
            assert_eq!(LinuxImage::parse(&b), Err(want));
        }
        let mut b = good.clone();
        put_u32(&mut b, off::KERNEL_ALIGNMENT, 0x30_0000);
        assert!(matches!(
            LinuxImage::parse(&b),
            Err(LinuxError::BadAlignment { .. })
        ));
    }

    #[test]
    fn plan_places_initrd_at_the_top_and_refuses_overlap() {
        let b = bz(4096);
        let i = LinuxImage::parse(&b).unwrap();
        let p = plan(&i, 4096, 0x10_0800, 256 << 20).unwrap();
        assert_eq!(p.kernel, 0x100_0000);
        assert_eq!(p.entry, 0x100_0200);
        assert_eq!(p.initrd, ((256 << 20) - 0x10_0800) & !0xFFF);
        assert!(p.initrd + p.initrd_size <= 256 << 20);
        // 16 MiB + 32 MiB init_size does not leave room for a 20 MiB initrd in 64 MiB.
        assert!(matches!(
            plan(&i, 4096, 20 << 20, 64 << 20),
            Err(LinuxError::DoesNotFit { .. })
        ));
    }

    #[test]
    fn zero_page_has_header_cmdline_initrd_and_e820() {
        let b = bz(4096);
        let i = LinuxImage::parse(&b).unwrap();
        let p = plan(&i, 4096, 0x1000, 256 << 20).unwrap();
        let map = e820(256 << 20);
        let zp = zero_page(&b, &i, &p, "console=ttyS0", &map).unwrap();
        assert_eq!(u32_at(&zp, off::HEADER), HEADER_MAGIC);
        assert_eq!(u16_at(&zp, off::BOOT_FLAG), BOOT_FLAG);
        assert_eq!(zp[off::TYPE_OF_LOADER], 0xFF);
        assert_eq!(u32_at(&zp, off::CMD_LINE_PTR) as u64, layout::CMDLINE);
        assert_eq!(u32_at(&zp, off::RAMDISK_IMAGE) as u64, p.initrd);
        assert_eq!(u32_at(&zp, off::RAMDISK_SIZE), 0x1000);
        assert_eq!(zp[off::E820_ENTRIES], 3);
        assert_eq!(u64_at(&zp, off::E820_TABLE + 40), 0x10_0000);
        assert_eq!(u64_at(&zp, off::E820_TABLE + 48), (256 << 20) - 0x10_0000);
        assert_eq!(u32_at(&zp, off::E820_TABLE + 56), E820_RAM);
        assert_eq!(u32_at(&zp, off::E820_TABLE + 36), E820_RESERVED);
        // Nothing beyond the header was copied: the sentinel (0x1EF) stays 0.
        assert_eq!(zp[0x1EF], 0);
        let long = "x".repeat(2048);
        assert_eq!(
            zero_page(&b, &i, &p, &long, &map),
            Err(LinuxError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        );
    }

    #[test]
    fn initrd_check() {
        assert!(check_initrd(b"070701000000").is_ok());
        assert!(
            check_initrd(&[0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_ok()
        );
        assert_eq!(check_initrd(&[]), Err(LinuxError::BadInitrd("empty")));
        assert!(check_initrd(&[0x1F, 0x8B, 8]).is_err());
        assert!(check_initrd(b"hello world").is_err());
    }
}
