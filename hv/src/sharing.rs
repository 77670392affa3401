//! Memory that moves between guests: shared windows (`window=KEY@GPA+SIZE:r|rw`) and
//! the balloon hypercall, on `ept::space` frame bundles.
//!
//! # Windows
//! The first guest that names window KEY creates it: the hypervisor maps that range
//! as RAM in the guest, populates it (zeros) and takes its frames out again as a
//! [`FrameBundle`], which it keeps for the rest of the run; then every guest naming
//! KEY (the first one included) maps the bundle as a shared window with its own
//! rights (`r` or `rw`). Writes reach the same frames in every guest, never copied;
//! a copy-on-write clone of a guest keeps its windows shared. The frames are freed
//! when the last of the guests and the hypervisor's bundle lets go.
//!
//! Quota: the window's frames are charged to the family of the guest that created
//! it (it took them from its own space), for as long as they live; each guest's
//! report lists the window and counts its frames among the RAM frames it maps. A
//! window is at most [`MAX_SHARED_WINDOW`] bytes, and every guest must name it with
//! the same size.
//!
//! # Balloon
//! [`hypercall::BALLOON`](crate::abi::hypercall::BALLOON) gives a RAM range's frames
//! back at once (`AddressSpace::discard`); the range stays the guest's on-demand
//! RAM.

use alloc::format;
use alloc::vec::Vec;

use ept::format::{Access, Stage2Format};
use ept::frame::{FrameAlloc, PhysMapper};
use ept::space::{AddressSpace, FrameBundle, Invalidate};
use memory_set::GuestPhysAddr;

use crate::memory::MemoryError;
use crate::outcome::FaultKind;
use crate::settings::{AreaKind, GuestSettings};
use crate::space_memory::memory_error;

/// Largest shared window.
pub const MAX_SHARED_WINDOW: u64 = 2 << 20;

/// The windows of a run: each key with its frames.
pub struct SharedWindows<A: FrameAlloc> {
    windows: Vec<(u32, FrameBundle<A>)>,
}

impl<A: FrameAlloc> Default for SharedWindows<A> {
    fn default() -> Self {
        Self {
            windows: Vec::new(),
        }
    }
}

impl<A: FrameAlloc> SharedWindows<A> {
    /// Windows created so far.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no window was created.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// Maps every window `settings` name into `space` (see the [module docs](self)).
pub fn attach<F, M, A, I>(
    space: &mut AddressSpace<F, M, A, I>,
    settings: &GuestSettings,
    shared: &mut SharedWindows<A>,
) -> Result<(), MemoryError>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    for area in &settings.areas {
        let AreaKind::Window { key, write } = area.kind else {
            continue;
        };
        let at = Some(area.gpa);
        let refuse = |why| MemoryError::new(FaultKind::Quota, at, why);
        if area.size > MAX_SHARED_WINDOW {
            return Err(refuse(format!(
                "shared windows are limited to {} KiB",
                MAX_SHARED_WINDOW >> 10
            )));
        }
        let gpa = GuestPhysAddr::from(area.gpa as usize);
        let size = area.size as usize;
        let access = if write { Access::RW } else { Access::READ };
        let index = match shared.windows.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                // The creator's RAM, populated, then taken out as the window's frames.
                space
                    .map_alloc(gpa, size, Access::RW, true)
                    .map_err(|e| memory_error(e, at))?;
                let bundle = space.take(gpa, size).map_err(|e| memory_error(e, at))?;
                shared.windows.push((key, bundle));
                shared.windows.len() - 1
            }
        };
        let bundle = &mut shared.windows[index].1;
        if bundle.size() != size {
            return Err(refuse(format!(
                "window {key} is {:#x} bytes, not {size:#x}",
                bundle.size()
            )));
        }
        space
            .map_window(gpa, bundle, access)
            .map_err(|e| memory_error(e, at))?;
        log::info!(
            "guest {}: shared window {key} at {:#x} ({} KiB, {})",
            settings.name,
            area.gpa,
            area.size >> 10,
            if write { "rw" } else { "r" }
        );
    }
    Ok(())
}

/// The balloon hypercall on `space`: gives `[gpa, gpa + size)` back; returns the
/// frames given back and the RAM frames held afterwards.
pub fn balloon<F, M, A, I>(
    space: &mut AddressSpace<F, M, A, I>,
    gpa: u64,
    size: u64,
) -> Result<(u64, u64), MemoryError>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    let freed = space
        .discard(GuestPhysAddr::from(gpa as usize), size as usize)
        .map_err(|e| memory_error(e, Some(gpa)))?;
    Ok((freed as u64, space.stats().ram_frames as u64))
}

#[cfg(test)]
mod tests {
    use ept::caps::Stage2Caps;
    use ept::flush::FlushScope;
    use ept::format::Npt;
    use ept::frame::{HeapArena, read_phys, write_phys};

    use super::*;
    use crate::settings::parse_guest_cmdline;

    type Space = AddressSpace<Npt, HeapArena, HeapArena, fn(FlushScope)>;

    fn noop(_: FlushScope) {}

    fn space(arena: &HeapArena) -> Space {
        let mut s = Space::new(
            GuestPhysAddr::from(0),
            1 << 30,
            Stage2Caps::npt(false),
            arena.clone(),
            arena.clone(),
            noop as fn(FlushScope),
            4096,
        )
        .unwrap();
        s.map_alloc(GuestPhysAddr::from(0x1000), 4 << 20, Access::RWX, false)
            .unwrap();
        s
    }

    fn guest(arena: &HeapArena, cmdline: &str, shared: &mut SharedWindows<HeapArena>) -> Space {
        let mut s = space(arena);
        attach(&mut s, &parse_guest_cmdline(cmdline).unwrap(), shared).unwrap();
        s
    }

    #[test]
    fn guests_naming_a_key_share_its_frames_with_their_own_rights() {
        let arena = HeapArena::new(4096);
        let mut shared = SharedWindows::default();
        let producer = guest(&arena, "p.bin window=1@0x4000000+8K:rw", &mut shared);
        let consumer = guest(&arena, "c.bin window=1@0x4000000+8K:r", &mut shared);
        assert_eq!(shared.len(), 1);
        let at = GuestPhysAddr::from(0x400_1008);
        let p = producer.translate(at).unwrap();
        let c = consumer.translate(at).unwrap();
        assert_eq!(p.hpa, c.hpa, "the same frame");
        assert!(p.attr.access.contains(Access::WRITE));
        assert!(!c.attr.access.contains(Access::WRITE));
        write_phys(&arena, p.hpa, &7u64.to_le_bytes()).unwrap();
        let mut b = [0u8; 8];
        read_phys(&arena, c.hpa, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 7);
        drop((producer, shared));
        assert!(consumer.translate(at).is_some(), "the last owner keeps it");
        drop(consumer);
        assert_eq!(arena.in_use(), 0);
    }

    #[test]
    fn windows_of_another_size_or_too_large_are_refused() {
        let arena = HeapArena::new(4096);
        let mut shared = SharedWindows::default();
        let first = guest(&arena, "a.bin window=1@0x4000000+8K:rw", &mut shared);
        let mut other = space(&arena);
        let settings = parse_guest_cmdline("b.bin window=1@0x4000000+4K:r").unwrap();
        let e = attach(&mut other, &settings, &mut shared).unwrap_err();
        assert!(e.detail.contains("is 0x2000 bytes"), "{}", e.detail);
        let settings = parse_guest_cmdline("b.bin window=2@0x4000000+4M:r").unwrap();
        let e = attach(&mut other, &settings, &mut shared).unwrap_err();
        assert!(e.detail.contains("limited"), "{}", e.detail);
        assert_eq!(shared.len(), 1);
        drop((first, other, shared));
        assert_eq!(arena.in_use(), 0);
    }

    #[test]
    fn the_balloon_gives_frames_back_and_refuses_what_is_not_ram() {
        let arena = HeapArena::new(4096);
        let mut shared = SharedWindows::default();
        let mut s = guest(&arena, "a.bin window=1@0x4000000+4K:rw", &mut shared);
        s.write(GuestPhysAddr::from(0x10_0000), &[1; 8192]).unwrap();
        let before = s.stats().ram_frames as u64;
        assert_eq!(balloon(&mut s, 0x10_0000, 0x2000).unwrap(), (2, before - 2));
        assert!(balloon(&mut s, 0x400_0000, 0x1000).is_err(), "a window");
        assert!(balloon(&mut s, 0x800_0000, 0x1000).is_err(), "unmapped");
        assert!(balloon(&mut s, 0x10_0800, 0x1000).is_err(), "unaligned");
        drop((s, shared));
        assert_eq!(arena.in_use(), 0);
    }
}
