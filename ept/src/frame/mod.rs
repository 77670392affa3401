//! Frames: where table (and guest) memory comes from, and how the host reaches it.
//!
//! [`FrameAlloc`] hands out 4 KiB frames (and optionally 2 MiB blocks);
//! [`PhysMapper`] turns a host-physical address into a pointer the hypervisor can
//! use. The safe helpers [`zero_frame`], [`zero_frames`], [`copy_frame`], [`read_phys`] and
//! [`write_phys`] let crates without `unsafe` move bytes through a mapper.
//! [`HeapArena`] implements both over heap memory for host tests and benchmarks.

mod arena;

use core::fmt;

use memory_set::{HostPhysAddr, MemoryAddr, PAGE_SIZE_4K};

pub use arena::HeapArena;

/// A source of host-physical frames.
pub trait FrameAlloc {
    /// A 4 KiB-aligned 4 KiB frame with unspecified contents, or `None` when out of
    /// memory.
    fn alloc_frame(&mut self) -> Option<HostPhysAddr>;

    /// Returns a frame from [`FrameAlloc::alloc_frame`].
    fn dealloc_frame(&mut self, frame: HostPhysAddr);

    /// A 2 MiB-aligned contiguous 2 MiB block, or `None` (also when unsupported).
    fn alloc_2m(&mut self) -> Option<HostPhysAddr> {
        None
    }

    /// Returns a block from [`FrameAlloc::alloc_2m`].
    ///
    /// # Panics
    ///
    /// The default panics: without `alloc_2m` there is no block to return.
    fn dealloc_2m(&mut self, block: HostPhysAddr) {
        let _ = block;
        unreachable!("dealloc_2m without alloc_2m support");
    }
}

impl<A: FrameAlloc + ?Sized> FrameAlloc for &mut A {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        (**self).alloc_frame()
    }
    fn dealloc_frame(&mut self, frame: HostPhysAddr) {
        (**self).dealloc_frame(frame)
    }
    fn alloc_2m(&mut self) -> Option<HostPhysAddr> {
        (**self).alloc_2m()
    }
    fn dealloc_2m(&mut self, block: HostPhysAddr) {
        (**self).dealloc_2m(block)
    }
}

/// Host-physical to host-virtual translation.
///
/// # Safety
///
/// For every `hpa` for which [`PhysMapper::is_mapped`] returns `true` (by default:
/// every address), and for every frame the allocators used with this mapper hand
/// out, `phys_to_virt(hpa)` must return a pointer valid for reads and writes of the
/// rest of the 4 KiB frame containing `hpa`, for as long as the mapper (or a clone)
/// exists, and that memory must not be accessed through Rust references elsewhere
/// while the safe helpers and tables use it. The pointer for a frame-aligned `hpa`
/// must be 4 KiB aligned. Clones map identically. Where the pointers of two such
/// frames are 4 KiB apart, one access may span both (as with a direct map).
pub unsafe trait PhysMapper: Clone {
    /// The host-virtual address of `hpa`.
    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8;

    /// Whether `hpa` may be accessed through [`PhysMapper::phys_to_virt`] (the safe
    /// helpers check it). Bare-metal direct maps of all memory keep the default.
    fn is_mapped(&self, hpa: HostPhysAddr) -> bool {
        let _ = hpa;
        true
    }
}

/// Why a physical-memory helper refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysAccessError {
    /// The mapper does not reach this address.
    NotMapped {
        /// The address.
        hpa: HostPhysAddr,
    },
    /// The access would run past the end of the 4 KiB frame holding `hpa`.
    CrossesFrame {
        /// The start of the access.
        hpa: HostPhysAddr,
        /// Its length in bytes.
        len: usize,
    },
    /// A frame argument is not 4 KiB aligned.
    Unaligned {
        /// The address.
        hpa: HostPhysAddr,
    },
}

impl fmt::Display for PhysAccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhysAccessError::NotMapped { hpa } => write!(f, "host address {hpa} is not mapped"),
            PhysAccessError::CrossesFrame { hpa, len } => {
                write!(f, "{len} bytes at {hpa} cross a 4 KiB frame boundary")
            }
            PhysAccessError::Unaligned { hpa } => write!(f, "frame {hpa} is not 4 KiB aligned"),
        }
    }
}

/// Checks that `[hpa, hpa + len)` lies in one mapped frame.
fn check_span(
    mapper: &impl PhysMapper,
    hpa: HostPhysAddr,
    len: usize,
) -> Result<(), PhysAccessError> {
    if hpa.align_offset(PAGE_SIZE_4K) + len > PAGE_SIZE_4K {
        return Err(PhysAccessError::CrossesFrame { hpa, len });
    }
    if !mapper.is_mapped(hpa) {
        return Err(PhysAccessError::NotMapped { hpa });
    }
    Ok(())
}

fn check_frame(mapper: &impl PhysMapper, hpa: HostPhysAddr) -> Result<(), PhysAccessError> {
    if !hpa.is_aligned_4k() {
        return Err(PhysAccessError::Unaligned { hpa });
    }
    check_span(mapper, hpa, PAGE_SIZE_4K)
}

/// Fills the 4 KiB frame at `frame` with zeros.
pub fn zero_frame(mapper: &impl PhysMapper, frame: HostPhysAddr) -> Result<(), PhysAccessError> {
    check_frame(mapper, frame)?;
    // SAFETY: `frame` is 4 KiB aligned and mapped (checked above), so by the
    // `PhysMapper` contract the pointer is valid for writes of 4 KiB.
    unsafe { core::ptr::write_bytes(mapper.phys_to_virt(frame), 0, PAGE_SIZE_4K) };
    Ok(())
}

/// Fills `frames` consecutive 4 KiB frames from `first` with zeros, with one write
/// per stretch of frames the mapper places next to each other (a direct map or the
/// host-test arena: one write for a 2 MiB block, which is faster than 512 small ones).
/// Checks every frame first; on error nothing was written.
pub fn zero_frames(
    mapper: &impl PhysMapper,
    first: HostPhysAddr,
    frames: usize,
) -> Result<(), PhysAccessError> {
    let frame = |k: usize| HostPhysAddr::new(first.as_usize().wrapping_add(k * PAGE_SIZE_4K));
    for k in 0..frames {
        check_frame(mapper, frame(k))?;
    }
    let mut k = 0;
    while k < frames {
        let start = mapper.phys_to_virt(frame(k));
        let mut n = 1;
        while k + n < frames
            && mapper.phys_to_virt(frame(k + n)) == start.wrapping_add(n * PAGE_SIZE_4K)
        {
            n += 1;
        }
        // SAFETY: each of the `n` frames is 4 KiB aligned and mapped (checked above),
        // so by the `PhysMapper` contract its pointer is valid for writes of 4 KiB; the
        // pointers follow each other, so `[start, start + n * 4 KiB)` is exactly the
        // union of those valid ranges (the contract's rule for adjacent frames).
        unsafe { core::ptr::write_bytes(start, 0, n * PAGE_SIZE_4K) };
        k += n;
    }
    Ok(())
}

/// Copies the 4 KiB frame at `src` to `dst` (distinct frames; copying a frame onto
/// itself is a no-op).
pub fn copy_frame(
    mapper: &impl PhysMapper,
    dst: HostPhysAddr,
    src: HostPhysAddr,
) -> Result<(), PhysAccessError> {
    check_frame(mapper, dst)?;
    check_frame(mapper, src)?;
    if dst == src {
        return Ok(());
    }
    let d = mapper.phys_to_virt(dst);
    let s = mapper.phys_to_virt(src);
    // SAFETY: both frames are aligned and mapped (checked), so each pointer is valid
    // for 4 KiB; distinct aligned frames do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(s, d, PAGE_SIZE_4K) };
    Ok(())
}

/// Reads `buf.len()` bytes at `hpa`; the span must stay inside one 4 KiB frame.
pub fn read_phys(
    mapper: &impl PhysMapper,
    hpa: HostPhysAddr,
    buf: &mut [u8],
) -> Result<(), PhysAccessError> {
    check_span(mapper, hpa, buf.len())?;
    let p = mapper.phys_to_virt(hpa);
    // SAFETY: the span lies in one mapped frame (checked), so `p` is valid for
    // `buf.len()` bytes; `buf` is a distinct Rust allocation.
    unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
    Ok(())
}

/// Writes `data` at `hpa`; the span must stay inside one 4 KiB frame.
pub fn write_phys(
    mapper: &impl PhysMapper,
    hpa: HostPhysAddr,
    data: &[u8],
) -> Result<(), PhysAccessError> {
    check_span(mapper, hpa, data.len())?;
    let p = mapper.phys_to_virt(hpa);
    // SAFETY: the span lies in one mapped frame (checked), so `p` is valid for
    // writes of `data.len()` bytes; `data` is a distinct Rust allocation.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_frames_zeroes_exactly_the_frames_and_checks_all_first() {
        let a = HeapArena::new(8);
        let base = HeapArena::BASE;
        let at = |k: usize| HostPhysAddr::new(base + k * PAGE_SIZE_4K);
        for k in 0..8 {
            write_phys(&a, at(k), &[0xab; 16]).unwrap();
            write_phys(&a, HostPhysAddr::new(at(k).as_usize() + 4080), &[0xcd; 16]).unwrap();
        }
        zero_frames(&a, at(2), 5).unwrap();
        for k in 0..8 {
            let (mut head, mut tail) = ([0u8; 16], [0u8; 16]);
            read_phys(&a, at(k), &mut head).unwrap();
            read_phys(&a, HostPhysAddr::new(at(k).as_usize() + 4080), &mut tail).unwrap();
            let zeroed = (2..7).contains(&k);
            assert_eq!(head, if zeroed { [0; 16] } else { [0xab; 16] }, "frame {k}");
            assert_eq!(tail, if zeroed { [0; 16] } else { [0xcd; 16] }, "frame {k}");
        }
        // The last frame is past the arena: refused before anything is written.
        assert_eq!(
            zero_frames(&a, at(0), 9),
            Err(PhysAccessError::NotMapped { hpa: at(8) })
        );
        let mut head = [0u8; 16];
        read_phys(&a, at(0), &mut head).unwrap();
        assert_eq!(head, [0xab; 16]);
        assert!(matches!(
            zero_frames(&a, HostPhysAddr::new(base + 8), 1),
            Err(PhysAccessError::Unaligned { .. })
        ));
    }
}
