//! The contract between the hypervisor, its guests and the build tool.
//!
//! * The **image format**: a flat binary that starts with an [`ImageHeader`], sealed by
//!   the build tool ([`seal`]) and validated by the hypervisor ([`ImageHeader::parse`]).
//! * The **hypercall numbers** ([`hypercall`]): `VMMCALL` (AMD) / `VMCALL` (Intel) with
//!   the number in RAX, arguments in RDI, RSI, RDX and the result in RAX.
//! * The **exit statuses** of a whole run ([`RunStatus`]), written by the hypervisor to
//!   QEMU's `isa-debug-exit` port and checked by the boot tests.
//!
//! Everything here is plain data and pure functions, usable on the host and in guests.

use core::fmt;

/// First bytes of every guest image.
pub const IMAGE_MAGIC: [u8; 8] = *b"S2GUEST\0";
/// The image format version this code reads and writes.
pub const IMAGE_VERSION: u32 = 1;
/// Size in bytes of the [`ImageHeader`] at the start of an image.
pub const HEADER_SIZE: usize = 64;
/// Offset of the checksum field inside the header.
pub const CHECKSUM_OFFSET: usize = 40;
/// Largest image the hypervisor accepts (16 MiB).
pub const MAX_IMAGE_SIZE: u64 = 16 << 20;

/// The header at the start of a flat guest image (little-endian, 64 bytes).
///
/// | offset | field |
/// |---|---|
/// | 0 | magic `S2GUEST\0` |
/// | 8 | version (u32) |
/// | 12 | header size (u32, 64) |
/// | 16 | load GPA (u64, 4 KiB aligned): where byte 0 of the image goes |
/// | 24 | entry GPA (u64, inside the image) |
/// | 32 | image size (u64): the length of the file, header included |
/// | 40 | checksum (u32): FNV-1a over the image with this field read as zero |
/// | 44 | flags (u32, 0) |
/// | 48 | reserved (16 bytes, zero) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Guest-physical address where the first byte of the image is loaded.
    pub load_gpa: u64,
    /// Guest-physical address of the first instruction (64-bit mode).
    pub entry_gpa: u64,
    /// Size of the whole image in bytes, header included.
    pub image_size: u64,
    /// FNV-1a checksum of the image (checksum field read as zero).
    pub checksum: u32,
}

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// The image is shorter than the header.
    TooShort {
        /// Length of the image in bytes.
        len: usize,
    },
    /// The first 8 bytes are not [`IMAGE_MAGIC`].
    BadMagic,
    /// The version is not [`IMAGE_VERSION`].
    UnsupportedVersion {
        /// Version found in the header.
        found: u32,
    },
    /// The header size field is not [`HEADER_SIZE`].
    BadHeaderSize {
        /// Header size found.
        found: u32,
    },
    /// The size in the header differs from the length of the image.
    SizeMismatch {
        /// Size the header claims.
        header: u64,
        /// Actual length of the image.
        actual: usize,
    },
    /// The image is larger than [`MAX_IMAGE_SIZE`].
    TooLarge {
        /// Size of the image.
        size: u64,
    },
    /// The load address is not 4 KiB aligned.
    UnalignedLoad {
        /// Load address found.
        load_gpa: u64,
    },
    /// The entry point is outside the loaded image.
    EntryOutside {
        /// Entry address found.
        entry_gpa: u64,
    },
    /// Flags or reserved bytes are not zero.
    ReservedNotZero,
    /// The checksum does not match the contents.
    BadChecksum {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum computed over the image.
        computed: u32,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => {
                write!(
                    f,
                    "image of {len} bytes is shorter than its {HEADER_SIZE}-byte header"
                )
            }
            Self::BadMagic => write!(f, "not a guest image (bad magic)"),
            Self::UnsupportedVersion { found } => {
                write!(f, "image format version {found}, expected {IMAGE_VERSION}")
            }
            Self::BadHeaderSize { found } => {
                write!(f, "header size {found}, expected {HEADER_SIZE}")
            }
            Self::SizeMismatch { header, actual } => {
                write!(f, "header says {header} bytes but the image has {actual}")
            }
            Self::TooLarge { size } => {
                write!(
                    f,
                    "image of {size} bytes exceeds the {MAX_IMAGE_SIZE}-byte limit"
                )
            }
            Self::UnalignedLoad { load_gpa } => {
                write!(f, "load address {load_gpa:#x} is not 4 KiB aligned")
            }
            Self::EntryOutside { entry_gpa } => {
                write!(f, "entry point {entry_gpa:#x} lies outside the image")
            }
            Self::ReservedNotZero => write!(f, "reserved header fields are not zero"),
            Self::BadChecksum { stored, computed } => write!(
                f,
                "checksum mismatch (header {stored:#010x}, contents {computed:#010x})"
            ),
        }
    }
}

fn u32_at(bytes: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[off..off + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[off..off + 8]);
    u64::from_le_bytes(b)
}

/// FNV-1a (32-bit) over `image`, reading the checksum field as zero.
pub fn image_checksum(image: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for (i, &byte) in image.iter().enumerate() {
        let b = if (CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4).contains(&i) {
            0
        } else {
            byte
        };
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

impl ImageHeader {
    /// Validates `image` (header fields, size, entry, checksum) and returns its header.
    pub fn parse(image: &[u8]) -> Result<Self, ImageError> {
        if image.len() < HEADER_SIZE {
            return Err(ImageError::TooShort { len: image.len() });
        }
        if image[..8] != IMAGE_MAGIC {
            return Err(ImageError::BadMagic);
        }
        let version = u32_at(image, 8);
        if version != IMAGE_VERSION {
            return Err(ImageError::UnsupportedVersion { found: version });
        }
        let header_size = u32_at(image, 12);
        if header_size as usize != HEADER_SIZE {
            return Err(ImageError::BadHeaderSize { found: header_size });
        }
        let header = Self {
            load_gpa: u64_at(image, 16),
            entry_gpa: u64_at(image, 24),
            image_size: u64_at(image, 32),
            checksum: u32_at(image, CHECKSUM_OFFSET),
        };
        if header.image_size != image.len() as u64 {
            return Err(ImageError::SizeMismatch {
                header: header.image_size,
                actual: image.len(),
            });
        }
        if header.image_size > MAX_IMAGE_SIZE {
            return Err(ImageError::TooLarge {
                size: header.image_size,
            });
        }
        if !header.load_gpa.is_multiple_of(4096) {
            return Err(ImageError::UnalignedLoad {
                load_gpa: header.load_gpa,
            });
        }
        let inside = header
            .entry_gpa
            .checked_sub(header.load_gpa)
            .is_some_and(|off| off >= HEADER_SIZE as u64 && off < header.image_size);
        if !inside || header.load_gpa.checked_add(header.image_size).is_none() {
            return Err(ImageError::EntryOutside {
                entry_gpa: header.entry_gpa,
            });
        }
        if u32_at(image, 44) != 0 || image[48..HEADER_SIZE].iter().any(|&b| b != 0) {
            return Err(ImageError::ReservedNotZero);
        }
        let computed = image_checksum(image);
        if computed != header.checksum {
            return Err(ImageError::BadChecksum {
                stored: header.checksum,
                computed,
            });
        }
        Ok(header)
    }
}

/// Writes the checksum of `image` into its header (the build tool's last step).
///
/// Returns the checksum, or an error if the image is shorter than a header.
pub fn seal(image: &mut [u8]) -> Result<u32, ImageError> {
    if image.len() < HEADER_SIZE {
        return Err(ImageError::TooShort { len: image.len() });
    }
    let sum = image_checksum(image);
    image[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(sum)
}

/// Hypercall numbers (RAX) and their arguments (RDI, RSI, RDX). Results come back in
/// RAX; negative values (as `i64`) are errors from [`HypercallStatus`].
pub mod hypercall {
    /// End this guest with the exit code in RDI (0 = its checks passed).
    pub const EXIT: u64 = 0;
    /// Size in bytes of the stage-2 leaf mapping GPA RDI (0 if not mapped).
    pub const LEAF_SIZE: u64 = 1;
    /// Change the rights of `[RDI, RDI+RSI)` to the [`super::access`] bits in RDX.
    pub const PROTECT: u64 = 2;
    /// Unmap `[RDI, RDI+RSI)` from this guest.
    pub const UNMAP: u64 = 3;
    /// Clone this guest (copy-on-write): returns the child's id in the parent, 0 in the
    /// child. Both continue from the instruction after the hypercall.
    pub const CLONE: u64 = 4;
    /// Let the other guests run; this one continues later.
    pub const YIELD: u64 = 5;
    /// Read the u64 at GPA RDI through the hypervisor's own view of guest memory.
    pub const HOST_READ: u64 = 6;
}

/// Access bits for [`hypercall::PROTECT`].
pub mod access {
    /// Readable.
    pub const READ: u64 = 1;
    /// Writable.
    pub const WRITE: u64 = 2;
    /// Executable.
    pub const EXECUTE: u64 = 4;
}

/// Error results of hypercalls (returned in RAX as negative numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum HypercallStatus {
    /// Arguments are malformed (unaligned, overflowing, unknown bits).
    InvalidArgument = -1,
    /// The range is outside the guest's memory or not mapped.
    NotMapped = -2,
    /// Not enough frames (or quota) to complete the request.
    NoMemory = -3,
    /// The hypervisor cannot do this (e.g. no free address space identifier).
    Unsupported = -4,
}

/// How a whole hypervisor run ends: the value written to the `isa-debug-exit` port.
///
/// QEMU exits with status `(value << 1) | 1`, see [`RunStatus::qemu_exit_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RunStatus {
    /// Every guest ended as expected and no frame leaked.
    AllPassed = 0x10,
    /// At least one guest ended differently from its expected outcome.
    GuestFailed = 0x11,
    /// The hypervisor itself took an exception or panicked.
    HostFault = 0x12,
    /// Frames were missing from the allocator after every guest was torn down.
    Leak = 0x13,
    /// The boot configuration (images, settings, command line) was refused.
    BadConfig = 0x14,
    /// The CPU lacks what the hypervisor needs (SVM with nested paging, or VMX with EPT).
    Unsupported = 0x15,
}

impl RunStatus {
    /// Every status, for lookups.
    pub const ALL: [RunStatus; 6] = [
        Self::AllPassed,
        Self::GuestFailed,
        Self::HostFault,
        Self::Leak,
        Self::BadConfig,
        Self::Unsupported,
    ];

    /// The process exit status QEMU reports when the hypervisor ends with `self`.
    pub const fn qemu_exit_status(self) -> i32 {
        ((self as i32) << 1) | 1
    }

    /// The status whose QEMU exit status is `status`, if any.
    pub fn from_qemu_exit_status(status: i32) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.qemu_exit_status() == status)
    }

    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllPassed => "all passed",
            Self::GuestFailed => "guest failed",
            Self::HostFault => "host fault",
            Self::Leak => "frame leak",
            Self::BadConfig => "bad configuration",
            Self::Unsupported => "unsupported CPU",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut img = vec![0u8; 256];
        img[..8].copy_from_slice(&IMAGE_MAGIC);
        img[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
        img[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        img[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes());
        img[24..32].copy_from_slice(&0x10_0040u64.to_le_bytes());
        img[32..40].copy_from_slice(&256u64.to_le_bytes());
        img[64..70].copy_from_slice(b"\x90\x90\xf4abc");
        seal(&mut img).unwrap();
        img
    }

    #[test]
    fn sealed_image_parses() {
        let h = ImageHeader::parse(&sample()).unwrap();
        assert_eq!(h.load_gpa, 0x10_0000);
        assert_eq!(h.entry_gpa, 0x10_0040);
        assert_eq!(h.image_size, 256);
        assert_eq!(h.checksum, image_checksum(&sample()));
    }

    #[test]
    fn every_malformation_is_refused() {
        assert_eq!(
            ImageHeader::parse(&sample()[..10]),
            Err(ImageError::TooShort { len: 10 })
        );
        let mut m = sample();
        m[0] = b'X';
        assert_eq!(ImageHeader::parse(&m), Err(ImageError::BadMagic));
        let mut v = sample();
        v[8] = 2;
        assert_eq!(
            ImageHeader::parse(&v),
            Err(ImageError::UnsupportedVersion { found: 2 })
        );
        let mut hs = sample();
        hs[12] = 32;
        assert_eq!(
            ImageHeader::parse(&hs),
            Err(ImageError::BadHeaderSize { found: 32 })
        );
        let mut short = sample();
        short.truncate(200);
        assert_eq!(
            ImageHeader::parse(&short),
            Err(ImageError::SizeMismatch {
                header: 256,
                actual: 200
            })
        );
        let mut un = sample();
        un[16] = 0x10;
        assert_eq!(
            ImageHeader::parse(&un),
            Err(ImageError::UnalignedLoad {
                load_gpa: 0x10_0010
            })
        );
        let mut e = sample();
        e[24..32].copy_from_slice(&0x10_0100u64.to_le_bytes());
        assert_eq!(
            ImageHeader::parse(&e),
            Err(ImageError::EntryOutside {
                entry_gpa: 0x10_0100
            })
        );
        let mut e2 = sample();
        e2[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert!(matches!(
            ImageHeader::parse(&e2),
            Err(ImageError::EntryOutside { .. })
        ));
        let mut r = sample();
        r[50] = 1;
        assert_eq!(ImageHeader::parse(&r), Err(ImageError::ReservedNotZero));
        let mut c = sample();
        c[100] ^= 0xff;
        assert!(matches!(
            ImageHeader::parse(&c),
            Err(ImageError::BadChecksum { .. })
        ));
    }

    #[test]
    fn checksum_ignores_its_own_field() {
        let a = sample();
        let mut b = a.clone();
        b[CHECKSUM_OFFSET] ^= 0x55;
        assert_eq!(image_checksum(&a), image_checksum(&b));
        let mut c = a.clone();
        c[CHECKSUM_OFFSET + 4] ^= 1;
        assert_ne!(image_checksum(&a), image_checksum(&c));
    }

    #[test]
    fn run_status_round_trips_through_qemu() {
        for s in RunStatus::ALL {
            assert_eq!(
                RunStatus::from_qemu_exit_status(s.qemu_exit_status()),
                Some(s)
            );
        }
        assert_eq!(RunStatus::AllPassed.qemu_exit_status(), 33);
        assert_eq!(RunStatus::from_qemu_exit_status(1), None);
    }
}
