//! The contract between the hypervisor, its guests and the build tool.
//!
//! * The **image format**: a flat binary that starts with an [`ImageHeader`], sealed by
//!   the build tool ([`seal`]) and validated by the hypervisor ([`ImageHeader::parse`]).
//! * The **hypercall numbers** ([`hypercall`]): `VMMCALL` (AMD) / `VMCALL` (Intel) with
//!   the number in RAX, arguments in RDI, RSI, RDX and the result in RAX.
//! * The **exit statuses** of a whole run ([`RunStatus`]), written by the hypervisor to
//!   QEMU's `isa-debug-exit` port and checked by the boot tests.
//!
//! * The guest's **start layout** that guests rely on ([`STACK_TOP`]).
//!
//! Everything here is plain data and pure functions, usable on the host and in guests:
//! the hypervisor (`hv::abi` re-exports this crate), the guest images and `xtask` all
//! link it, so a guest never links hypervisor code.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt;

/// Where the hypervisor points a 64-bit guest's RSP at entry (the stack grows down from
/// here; the image starts here).
pub const STACK_TOP: u64 = 0x10_0000;

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
/// Header flag: the guest starts in 16-bit real mode (CR0.PE = 0, CR0.PG = 0) instead
/// of 64-bit long mode (Intel SDM vol. 3A 9.1.1 "Processor State After Reset" for the
/// real-mode state; AMD APM vol. 2 15.5 for VMRUN into a real-mode guest).
pub const IMAGE_FLAG_REAL_MODE: u32 = 1 << 0;
/// Every header flag this code knows.
pub const IMAGE_FLAGS_KNOWN: u32 = IMAGE_FLAG_REAL_MODE;
/// End of the memory a real-mode image may occupy: the 640 KiB of conventional memory
/// (real mode reaches 1 MiB + 64 KiB at most, SDM vol. 3A 21.1.1; the range above
/// 640 KiB is traditionally the legacy video and BIOS area).
pub const REAL_MODE_IMAGE_END: u64 = 0xA_0000;
/// Largest distance from the load address to the entry point of a real-mode image:
/// the code segment starts at the load address and IP has 16 bits.
pub const REAL_MODE_MAX_ENTRY_OFFSET: u64 = 0xFFFF;

/// The CPU mode a guest starts in, from the header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// 64-bit long mode with identity page tables (the default).
    Long64,
    /// 16-bit real mode: no paging, segments = load address / 16 ([`IMAGE_FLAG_REAL_MODE`]).
    Real16,
}

impl GuestMode {
    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Long64 => "64-bit long mode",
            Self::Real16 => "16-bit real mode",
        }
    }
}

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
/// | 44 | flags (u32): [`IMAGE_FLAG_REAL_MODE`] or 0 |
/// | 48 | reserved (16 bytes, zero) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Guest-physical address where the first byte of the image is loaded.
    pub load_gpa: u64,
    /// Guest-physical address of the first instruction.
    pub entry_gpa: u64,
    /// Size of the whole image in bytes, header included.
    pub image_size: u64,
    /// FNV-1a checksum of the image (checksum field read as zero).
    pub checksum: u32,
    /// The mode the guest starts in (header flags).
    pub mode: GuestMode,
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
    /// Reserved bytes are not zero.
    ReservedNotZero,
    /// The flags hold bits this code does not know.
    UnknownFlags {
        /// The flags found.
        flags: u32,
    },
    /// A real-mode image that real mode cannot reach: it ends above
    /// [`REAL_MODE_IMAGE_END`], or its entry lies more than
    /// [`REAL_MODE_MAX_ENTRY_OFFSET`] bytes past its load address.
    RealModeOutOfReach {
        /// Load address found.
        load_gpa: u64,
        /// Entry address found.
        entry_gpa: u64,
        /// End of the image (exclusive).
        end: u64,
    },
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
            Self::UnknownFlags { flags } => write!(
                f,
                "unknown header flags {:#x} (known: {IMAGE_FLAGS_KNOWN:#x})",
                flags & !IMAGE_FLAGS_KNOWN
            ),
            Self::RealModeOutOfReach {
                load_gpa,
                entry_gpa,
                end,
            } => write!(
                f,
                "real-mode image {load_gpa:#x}..{end:#x} with entry {entry_gpa:#x} is out of \
                 real mode's reach (image below {REAL_MODE_IMAGE_END:#x}, entry within \
                 {REAL_MODE_MAX_ENTRY_OFFSET:#x} bytes of the load address)"
            ),
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
            mode: GuestMode::Long64,
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
        if image[48..HEADER_SIZE].iter().any(|&b| b != 0) {
            return Err(ImageError::ReservedNotZero);
        }
        let flags = u32_at(image, 44);
        if flags & !IMAGE_FLAGS_KNOWN != 0 {
            return Err(ImageError::UnknownFlags { flags });
        }
        let mut header = header;
        if flags & IMAGE_FLAG_REAL_MODE != 0 {
            header.mode = GuestMode::Real16;
            let end = header.load_gpa + header.image_size;
            if end > REAL_MODE_IMAGE_END
                || header.entry_gpa - header.load_gpa > REAL_MODE_MAX_ENTRY_OFFSET
            {
                return Err(ImageError::RealModeOutOfReach {
                    load_gpa: header.load_gpa,
                    entry_gpa: header.entry_gpa,
                    end,
                });
            }
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
    ///
    /// 0 on success (also when the rights are already those). Errors:
    /// `InvalidArgument` (unaligned or empty range, unknown bits, rights no entry can
    /// carry such as write without read), `NotMapped` (no area in the range, or the
    /// range leaves the guest's space), `Denied` (rights above what the host mapped an
    /// area with: `ro=`, `nx=`, a device window is never executable), `NoMemory` (no
    /// frame within the quota to split a huge leaf). The guest is ended instead when
    /// its bookkeeping budget or the host itself runs out.
    pub const PROTECT: u64 = 2;
    /// Unmap `[RDI, RDI+RSI)` from this guest; errors as for [`PROTECT`] (holes
    /// inside the range are fine, a range with nothing mapped is `NotMapped`).
    pub const UNMAP: u64 = 3;
    /// Clone this guest (copy-on-write): returns the child's id in the parent, 0 in the
    /// child. Both continue from the instruction after the hypercall.
    pub const CLONE: u64 = 4;
    /// Let the other guests run; this one continues later.
    pub const YIELD: u64 = 5;
    /// Read the u64 at GPA RDI through the hypervisor's own view of guest memory,
    /// which follows the stage-2 mapping: `NotMapped` once the page is unmapped,
    /// `Denied` once it is not readable.
    pub const HOST_READ: u64 = 6;
    /// Snapshot this guest: its memory contents (copy-on-write) and its vCPU state
    /// (registers, control and segment registers, MSRs, x87/SSE), as of the instruction
    /// after the hypercall. Returns 0 now; after each [`RESET`] the guest resumes here
    /// again with RAX = the number of resets so far (1, 2, ...). A new snapshot
    /// replaces the old one.
    pub const SNAPSHOT: u64 = 7;
    /// Bring this guest back to its snapshot (memory and vCPU): does not return; the
    /// guest resumes after its [`SNAPSHOT`] call. Fails (negative RAX) without a
    /// snapshot, or when the guest's areas changed since (PROTECT, UNMAP).
    pub const RESET: u64 = 8;
    /// Balloon: give the RAM frames of `[RDI, RDI+RSI)` back to the host at once. The
    /// range stays this guest's on-demand RAM (touching it again gives zeros).
    /// Returns the number of 4 KiB frames the guest stopped holding (a 2 MiB block
    /// goes back with its last page).
    pub const BALLOON: u64 = 9;
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
    /// The host's policy forbids it (rights above an area's host-configured ceiling,
    /// a range the hypervisor owns).
    Denied = -5,
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

    /// A sealed image of `size` bytes loaded at `load` with entry `entry` and `flags`.
    fn with_flags(load: u64, entry: u64, size: usize, flags: u32) -> Vec<u8> {
        let mut img = sample();
        img.resize(size, 0);
        img[16..24].copy_from_slice(&load.to_le_bytes());
        img[24..32].copy_from_slice(&entry.to_le_bytes());
        img[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        img[44..48].copy_from_slice(&flags.to_le_bytes());
        seal(&mut img).unwrap();
        img
    }

    #[test]
    fn mode_comes_from_the_flags() {
        assert_eq!(
            ImageHeader::parse(&sample()).unwrap().mode,
            GuestMode::Long64
        );
        let real = with_flags(0x1_0000, 0x1_0040, 256, IMAGE_FLAG_REAL_MODE);
        let h = ImageHeader::parse(&real).unwrap();
        assert_eq!(h.mode, GuestMode::Real16);
        assert_eq!((h.load_gpa, h.entry_gpa), (0x1_0000, 0x1_0040));
        // The last image that still fits below 640 KiB, entry at the last IP.
        let top = with_flags(0x8_0000, 0x8_FFFF, 0x2_0000, IMAGE_FLAG_REAL_MODE);
        assert_eq!(ImageHeader::parse(&top).unwrap().mode, GuestMode::Real16);
    }

    #[test]
    fn unknown_flags_are_refused() {
        for flags in [2, 1 << 31, IMAGE_FLAG_REAL_MODE | 4] {
            assert_eq!(
                ImageHeader::parse(&with_flags(0x1_0000, 0x1_0040, 256, flags)),
                Err(ImageError::UnknownFlags { flags })
            );
        }
    }

    #[test]
    fn real_mode_images_must_be_reachable() {
        // Loaded at 1 MiB: fine in long mode, out of reach in real mode.
        assert!(ImageHeader::parse(&with_flags(0x10_0000, 0x10_0040, 256, 0)).is_ok());
        assert_eq!(
            ImageHeader::parse(&with_flags(0x10_0000, 0x10_0040, 256, IMAGE_FLAG_REAL_MODE)),
            Err(ImageError::RealModeOutOfReach {
                load_gpa: 0x10_0000,
                entry_gpa: 0x10_0040,
                end: 0x10_0100
            })
        );
        // Ends one byte past 640 KiB.
        assert!(matches!(
            ImageHeader::parse(&with_flags(
                0x9_F000,
                0x9_F040,
                0x1001,
                IMAGE_FLAG_REAL_MODE
            )),
            Err(ImageError::RealModeOutOfReach { end: 0xA_0001, .. })
        ));
        // Entry 64 KiB past the load address: IP cannot hold it.
        assert!(matches!(
            ImageHeader::parse(&with_flags(
                0x1_0000,
                0x2_0000,
                0x2_0000,
                IMAGE_FLAG_REAL_MODE
            )),
            Err(ImageError::RealModeOutOfReach {
                entry_gpa: 0x2_0000,
                ..
            })
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
