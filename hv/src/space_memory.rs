//! [`GuestMemory`] on `ept::space::AddressSpace`: on-demand RAM (2 MiB leaves where
//! the area allows), quotas, copy-on-write clones, and linear windows onto host
//! buffers that this module owns.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use ept::caps::Stage2Caps;
use ept::fault::Stage2Fault;
use ept::flush::FlushScope;
use ept::format::{Access, MemType, Stage2Format};
use ept::frame::{FrameAlloc, PhysMapper, read_phys, write_phys};
use ept::space::{
    AddressSpace, ENTRY_BYTES, Invalidate, Limits, MetadataPool, OomReason, RangeProblem,
    SpaceError,
};
use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr};

use crate::layout::{LOW_RAM_END, LOW_RAM_START};
use crate::memory::{GuestMemory, MemoryError, mmio_pattern, permission_kind};
use crate::outcome::FaultKind;
use crate::platform::{GlobalFrames, IdentityMapper};
use crate::settings::{AreaKind, GPA_LIMIT, GuestSettings, default_quota_frames};
use crate::vcpu::FlushRequest;

/// Largest linear window (one contiguous 2 MiB host block backs it).
pub const MAX_WINDOW: u64 = 2 << 20;

/// Heap the guests' bookkeeping (areas, shared-frame entries) may take in all: half
/// of the 32 MiB kernel heap (`kernel/start.rs`), the rest stays for the hypervisor.
pub const METADATA_POOL_BYTES: usize = 16 << 20;

/// The kernel's pool of bookkeeping entries, shared by every guest family.
static KERNEL_METADATA_POOL: MetadataPool = MetadataPool::new(METADATA_POOL_BYTES / ENTRY_BYTES);

/// Bookkeeping entries charged for the heap a guest's VM and vCPU take outside its
/// address space (VMCB or VMCS page, world-switch state, name and line buffer: about
/// 8 KiB, charged as 16 KiB), so that clones cannot grow the heap unaccounted.
pub const VM_HEAP_ENTRIES: usize = (16 << 10) / ENTRY_BYTES;

/// The bookkeeping budget of a family with `quota_frames`: the default for its quota
/// ([`Limits::default_metadata`]), but never more than a quarter of the pool, so
/// that one family running out leaves room for the others.
pub fn metadata_entries(quota_frames: usize, pool: &MetadataPool) -> usize {
    Limits::default_metadata(quota_frames).min(pool.limit() / 4)
}

impl Invalidate for FlushRequest {
    fn invalidate(&mut self, _scope: FlushScope) {
        // Neither TLB_CONTROL nor INVEPT single-context is by address: flush the
        // guest's whole context before its next entry.
        self.request();
    }
}

/// Where guest frames come from and how the hypervisor reaches them: the kernel's
/// global pool ([`KernelMemory`]), or a heap arena in host tests.
pub trait HostMemory: 'static {
    /// The frame allocator handle.
    type Alloc: FrameAlloc + Clone;
    /// The physical-memory mapper.
    type Mapper: PhysMapper;
    /// A handle to the allocator.
    fn alloc() -> Self::Alloc;
    /// The mapper.
    fn mapper() -> Self::Mapper;
    /// Frames in the pool (bounds the default quota).
    fn total_frames() -> usize;
    /// The host-wide pool of bookkeeping entries.
    fn metadata_pool() -> &'static MetadataPool;
}

/// The kernel's frames: the global allocator, reached through the identity mapping.
pub struct KernelMemory;

impl HostMemory for KernelMemory {
    type Alloc = GlobalFrames;
    type Mapper = IdentityMapper;

    fn alloc() -> GlobalFrames {
        GlobalFrames
    }

    fn mapper() -> IdentityMapper {
        IdentityMapper
    }

    fn total_frames() -> usize {
        crate::platform::frame_usage().1
    }

    fn metadata_pool() -> &'static MetadataPool {
        &KERNEL_METADATA_POOL
    }
}

/// A host buffer behind a linear window: one 2 MiB block, freed when the last space
/// mapping it (a guest and its clones) is gone.
struct HostWindow<H: HostMemory> {
    gpa: u64,
    size: u64,
    block: HostPhysAddr,
    alloc: H::Alloc,
}

impl<H: HostMemory> Drop for HostWindow<H> {
    fn drop(&mut self) {
        self.alloc.dealloc_2m(self.block);
    }
}

type Space<F, H> =
    AddressSpace<F, <H as HostMemory>::Mapper, <H as HostMemory>::Alloc, FlushRequest>;
type Snapshot<F, H> =
    ept::space::Snapshot<F, <H as HostMemory>::Mapper, <H as HostMemory>::Alloc, FlushRequest>;

/// A guest's memory as an address space.
pub struct SpaceMemory<F: Stage2Format, H: HostMemory = KernelMemory> {
    // Field order matters: the snapshot and the space (and its mappings) go before the
    // windows' host blocks.
    snapshot: Option<Snapshot<F, H>>,
    space: Space<F, H>,
    windows: Vec<Arc<HostWindow<H>>>,
}

fn gpa(a: u64) -> GuestPhysAddr {
    GuestPhysAddr::from(a as usize)
}

/// Translates an address-space error into the terms of a guest's end.
pub fn memory_error(e: SpaceError, at: Option<u64>) -> MemoryError {
    let (kind, gpa) = match &e {
        SpaceError::NotMapped { gpa } => (FaultKind::Unmapped, Some(usize::from(*gpa) as u64)),
        SpaceError::PermissionDenied { gpa, access, .. } => {
            (permission_kind(*access), Some(usize::from(*gpa) as u64))
        }
        SpaceError::OutOfMemory {
            gpa,
            reason: OomReason::Quota { .. },
        } => (FaultKind::Quota, gpa.map(|g| usize::from(g) as u64).or(at)),
        SpaceError::OutOfMemory {
            gpa,
            reason: OomReason::HostFrames,
        } => (
            FaultKind::HostMemory,
            gpa.map(|g| usize::from(g) as u64).or(at),
        ),
        SpaceError::OutOfMetadata { .. } => (FaultKind::Metadata, at),
        SpaceError::RightsExceeded {
            gpa,
            requested,
            ceiling,
        } => (
            permission_kind(requested.difference(*ceiling)),
            Some(usize::from(*gpa) as u64),
        ),
        SpaceError::InvalidRange {
            start,
            problem: RangeProblem::OutsideWindow | RangeProblem::BeyondPhysWidth,
            ..
        } => (FaultKind::Unmapped, Some(*start as u64)),
        SpaceError::Misconfigured { gpa } => {
            (FaultKind::Instruction, Some(usize::from(*gpa) as u64))
        }
        _ => (FaultKind::Hypercall, at),
    };
    MemoryError::new(kind, gpa, e.to_string())
}

impl<F: Stage2Format, H: HostMemory> SpaceMemory<F, H> {
    /// For PROTECT and UNMAP: a range with no area at all is `NotMapped` (holes
    /// inside a range that has areas are fine); malformed ranges are left to the
    /// space, which names the problem.
    fn something_mapped(&self, at: u64, size: u64) -> Result<(), MemoryError> {
        if !at.is_multiple_of(4096) || !size.is_multiple_of(4096) {
            return Ok(());
        }
        let Some(range) = AddrRange::from_start_size(gpa(at), size as usize) else {
            return Ok(());
        };
        if range.is_empty() || self.space.overlaps(range) {
            return Ok(());
        }
        Err(MemoryError::new(
            FaultKind::Unmapped,
            Some(at),
            format!("nothing is mapped in {at:#x}+{size:#x}"),
        ))
    }

    fn window_at(&self, at: u64) -> Option<&Arc<HostWindow<H>>> {
        self.windows
            .iter()
            .find(|w| w.gpa <= at && at - w.gpa < w.size)
    }

    /// Copies between `buf` and a host window, one frame at a time, through the
    /// guest's stage-2 mapping: a page the guest unmapped, or whose rights lack
    /// `need`, refuses (the host buffer outlives the mapping, the view must not).
    fn window_io(
        &self,
        at: u64,
        len: usize,
        need: Access,
        mut f: impl FnMut(HostPhysAddr, core::ops::Range<usize>) -> bool,
    ) -> Option<Result<(), MemoryError>> {
        let w = self.window_at(at)?;
        if at + len as u64 > w.gpa + w.size {
            return Some(Err(MemoryError::new(
                FaultKind::Unmapped,
                Some(at),
                "access runs past the end of a host window".into(),
            )));
        }
        let mut done = 0;
        while done < len {
            let offset = at + done as u64 - w.gpa;
            let n = (4096 - (offset % 4096) as usize).min(len - done);
            let hpa = HostPhysAddr::from(usize::from(w.block) + offset as usize);
            let here = at + done as u64;
            match self.space.translate(gpa(here)) {
                Some(t) if t.hpa == hpa && t.attr.access.contains(need) => {}
                Some(t) if t.hpa == hpa => {
                    return Some(Err(MemoryError::new(
                        permission_kind(need),
                        Some(here),
                        format!("the guest's mapping of this window page does not allow {need:?}"),
                    )));
                }
                _ => {
                    return Some(Err(MemoryError::new(
                        FaultKind::Unmapped,
                        Some(here),
                        "this host window page is no longer mapped".into(),
                    )));
                }
            }
            if !f(hpa, done..done + n) {
                return Some(Err(MemoryError::new(
                    FaultKind::Unmapped,
                    Some(at),
                    "host window unreachable".into(),
                )));
            }
            done += n;
        }
        Some(Ok(()))
    }
}

impl<F: Stage2Format, H: HostMemory> GuestMemory for SpaceMemory<F, H> {
    type Shared = crate::sharing::SharedWindows<H::Alloc>;

    fn attach_shared(
        &mut self,
        settings: &GuestSettings,
        shared: &mut Self::Shared,
    ) -> Result<(), MemoryError> {
        crate::sharing::attach(&mut self.space, settings, shared)
    }

    fn balloon(&mut self, gpa: u64, size: u64) -> Result<(u64, u64), MemoryError> {
        crate::sharing::balloon(&mut self.space, gpa, size)
    }

    fn create(
        settings: &GuestSettings,
        caps: Stage2Caps,
        flush: FlushRequest,
    ) -> Result<Self, MemoryError> {
        let quota_frames = settings.quota.map_or_else(
            || default_quota_frames(settings, H::total_frames()),
            |q| (q / 4096) as usize,
        );
        let pool = H::metadata_pool();
        let limits = Limits {
            quota_frames,
            metadata_entries: metadata_entries(quota_frames, pool),
            pool: Some(pool),
        };
        let mut space = Space::<F, H>::with_limits(
            gpa(0),
            GPA_LIMIT as usize,
            caps,
            H::mapper(),
            H::alloc(),
            flush,
            limits,
        )
        .map_err(|e| memory_error(e, None))?;
        space
            .charge_metadata(VM_HEAP_ENTRIES)
            .map_err(|e| memory_error(e, None))?;
        // RAM in two areas: the low one starts at 4 KiB (page 0 stays unmapped, so a
        // null access faults) and therefore never gets a 2 MiB leaf; see `layout`.
        let low = (LOW_RAM_START, LOW_RAM_END.min(settings.mem));
        for (start, end) in [low, (LOW_RAM_END, settings.mem)] {
            if start < end {
                let size = (end - start) as usize;
                space
                    .map_alloc(gpa(start), size, Access::RWX, settings.populate)
                    .map_err(|e| memory_error(e, Some(start)))?;
            }
        }
        let mut windows = Vec::new();
        for area in &settings.areas {
            match area.kind {
                AreaKind::Ram {
                    read,
                    write,
                    execute,
                    populate,
                } => {
                    let mut access = Access::empty();
                    access.set(Access::READ, read);
                    access.set(Access::WRITE, write);
                    access.set(Access::EXECUTE, execute);
                    space
                        .map_alloc(gpa(area.gpa), area.size as usize, access, populate)
                        .map_err(|e| memory_error(e, Some(area.gpa)))?;
                }
                // Mapped by `attach_shared` (see `sharing`).
                AreaKind::Window { .. } => {}
                AreaKind::Mmio => {
                    if area.size > MAX_WINDOW {
                        return Err(MemoryError::new(
                            FaultKind::Quota,
                            Some(area.gpa),
                            format!("linear windows are limited to {} KiB", MAX_WINDOW >> 10),
                        ));
                    }
                    let block = H::alloc().alloc_2m().ok_or_else(|| {
                        MemoryError::new(
                            FaultKind::Quota,
                            Some(area.gpa),
                            "no 2 MiB host block for a linear window".into(),
                        )
                    })?;
                    let window = Arc::new(HostWindow::<H> {
                        gpa: area.gpa,
                        size: area.size,
                        block,
                        alloc: H::alloc(),
                    });
                    let mut page = [0u8; 4096];
                    for p in 0..area.size / 4096 {
                        for (i, chunk) in page.chunks_mut(8).enumerate() {
                            let offset = p * 4096 + i as u64 * 8;
                            chunk.copy_from_slice(&mmio_pattern(offset).to_le_bytes());
                        }
                        let hpa = HostPhysAddr::from(usize::from(block) + (p * 4096) as usize);
                        write_phys(&H::mapper(), hpa, &page).map_err(|e| {
                            MemoryError::new(FaultKind::Quota, Some(area.gpa), format!("{e:?}"))
                        })?;
                    }
                    space
                        .map_linear(
                            gpa(area.gpa),
                            block,
                            area.size as usize,
                            Access::RW,
                            MemType::Uncacheable,
                        )
                        .map_err(|e| memory_error(e, Some(area.gpa)))?;
                    windows.push(window);
                }
            }
        }
        space.set_zero_page(settings.zero_page);
        Ok(Self {
            snapshot: None,
            space,
            windows,
        })
    }

    fn root_pointer(&self) -> u64 {
        self.space.root_pointer()
    }

    fn handle_fault(&mut self, fault: Stage2Fault) -> Result<(), MemoryError> {
        let at = usize::from(fault.gpa) as u64;
        self.space.handle_fault(fault).map(|_| ()).map_err(|e| {
            let mut error = memory_error(e, Some(at));
            if fault.kind == ept::fault::FaultKind::Misconfig {
                // The hardware rejected an entry: say which, as the validator sees it.
                let why = self.space.explain_misconfig(fault.gpa);
                error.detail = format!(
                    "{}: {}",
                    error.detail,
                    why.as_deref()
                        .unwrap_or("the table validator finds no bad entry")
                );
            }
            error
        })
    }

    fn write(&mut self, at: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        if let Some(r) = self.window_io(at, bytes.len(), Access::WRITE, |hpa, range| {
            write_phys(&H::mapper(), hpa, &bytes[range]).is_ok()
        }) {
            return r;
        }
        self.space
            .write(gpa(at), bytes)
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn read(&mut self, at: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut tmp = alloc::vec![0u8; buf.len()];
        if let Some(r) = self.window_io(at, buf.len(), Access::READ, |hpa, range| {
            read_phys(&H::mapper(), hpa, &mut tmp[range]).is_ok()
        }) {
            buf.copy_from_slice(&tmp);
            return r;
        }
        self.space
            .read(gpa(at), buf)
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn leaf_size(&self, at: u64) -> Option<u64> {
        self.space.translate(gpa(at)).map(|t| t.size.size() as u64)
    }

    fn protect(&mut self, at: u64, size: u64, access: Access) -> Result<(), MemoryError> {
        self.something_mapped(at, size)?;
        self.space
            .protect(gpa(at), size as usize, access)
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn unmap(&mut self, at: u64, size: u64) -> Result<(), MemoryError> {
        self.something_mapped(at, size)?;
        self.space
            .unmap(gpa(at), size as usize)
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn try_clone(&mut self, flush: FlushRequest) -> Result<Self, MemoryError> {
        let mut space = self
            .space
            .try_clone_with(flush)
            .map_err(|e| memory_error(e, None))?;
        space
            .charge_metadata(VM_HEAP_ENTRIES)
            .map_err(|e| memory_error(e, None))?;
        Ok(Self {
            snapshot: None,
            space,
            windows: self.windows.clone(),
        })
    }

    fn snapshot(&mut self) -> Result<(), MemoryError> {
        // One snapshot at a time: the old one goes first (its frames count against the
        // quota).
        self.snapshot = None;
        let snap = self.space.snapshot().map_err(|e| memory_error(e, None))?;
        self.snapshot = Some(snap);
        Ok(())
    }

    fn reset(&mut self) -> Result<u64, MemoryError> {
        let snap = self.snapshot.as_ref().ok_or_else(|| {
            MemoryError::new(FaultKind::Hypercall, None, "no snapshot to reset to".into())
        })?;
        let stats = self
            .space
            .restore(snap)
            .map_err(|e| memory_error(e, None))?;
        Ok(stats.pages_restored() as u64)
    }

    fn faults_handled(&self) -> u64 {
        self.space.stats().faults_handled
    }

    fn report(&self) -> String {
        let mut s = format!("{}", self.space.report());
        s.truncate(s.trim_end().len());
        // The software walker checks the table as the hardware would, plus the space's
        // own invariants (leaves inside their areas, no writable shared frame, ...).
        match self.space.validate() {
            Ok(()) => s.push_str("\n  validator: OK"),
            Err(rule) => {
                s.push_str("\n  validator: FAILED (");
                s.push_str(rule);
                s.push(')');
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use ept::fault::{FaultKind as S2Kind, Stage2Fault};
    use ept::format::Npt;
    use ept::frame::HeapArena;

    use super::*;
    use crate::settings::parse_guest_cmdline;

    std::thread_local! {
        static ARENA: HeapArena = HeapArena::new(8192);
    }

    /// Frames from a per-thread heap arena.
    pub(super) struct ArenaMemory;

    impl HostMemory for ArenaMemory {
        type Alloc = HeapArena;
        type Mapper = HeapArena;

        fn alloc() -> HeapArena {
            ARENA.with(|a| a.clone())
        }

        fn mapper() -> HeapArena {
            Self::alloc()
        }

        fn total_frames() -> usize {
            Self::alloc().capacity()
        }

        fn metadata_pool() -> &'static MetadataPool {
            &TEST_POOL
        }
    }

    pub(super) static TEST_POOL: MetadataPool = MetadataPool::new(1 << 20);

    pub(super) type Mem = SpaceMemory<Npt, ArenaMemory>;

    pub(super) fn memory(cmdline: &str) -> Mem {
        let settings = parse_guest_cmdline(cmdline).unwrap();
        Mem::create(&settings, Stage2Caps::npt(false), FlushRequest::new()).unwrap()
    }

    fn fault(at: u64, access: Access) -> Stage2Fault {
        Stage2Fault {
            gpa: gpa(at),
            access,
            kind: S2Kind::NotPresent,
            in_guest_walk: false,
        }
    }

    pub(super) fn read_u64(m: &mut Mem, at: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        m.read(at, &mut b).map(|()| u64::from_le_bytes(b))
    }

    pub(super) fn in_use() -> usize {
        ArenaMemory::alloc().in_use()
    }

    #[test]
    fn ram_areas_and_windows() {
        let mut m = memory("t.bin mem=8M ro=0x1000000+64K mmio=0x2000000+64K");
        m.write(0x10_0000, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 3];
        m.read(0x10_0000, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(read_u64(&mut m, 0x100_0000), Ok(0));
        assert_eq!(
            m.write(0x100_0000, &[9]).unwrap_err().kind,
            FaultKind::Write
        );
        assert_eq!(read_u64(&mut m, 0).unwrap_err().kind, FaultKind::Unmapped);
        assert_eq!(
            read_u64(&mut m, 0x80_0000).unwrap_err().kind,
            FaultKind::Unmapped
        );
        for offset in [0u64, 8, 0x1238, 0xFFF8] {
            assert_eq!(
                read_u64(&mut m, 0x200_0000 + offset),
                Ok(mmio_pattern(offset))
            );
        }
        m.write(0x200_0100, &7u64.to_le_bytes()).unwrap();
        assert_eq!(read_u64(&mut m, 0x200_0100), Ok(7));
        assert!(
            read_u64(&mut m, 0x200_FFFC).is_err(),
            "past the window's end"
        );
        let report = m.report();
        assert!(report.contains("linear"), "{report}");
        assert!(report.ends_with("\n  validator: OK"), "{report}");
        assert!(report.contains("r--"), "{report}");
        drop(m);
        assert_eq!(in_use(), 0);
    }

    #[test]
    fn faults_pick_leaf_sizes_and_refuse_what_areas_forbid() {
        let mut m = memory("t.bin mem=8M ro=0x1000000+64K");
        m.handle_fault(fault(0x30_0000, Access::WRITE)).unwrap();
        assert_eq!(m.leaf_size(0x30_0000), Some(2 << 20));
        m.handle_fault(fault(0x5000, Access::WRITE)).unwrap();
        assert_eq!(
            m.leaf_size(0x5000),
            Some(4096),
            "low RAM never gets 2 MiB leaves"
        );
        assert_eq!(m.leaf_size(0x7000), None);
        let e = m
            .handle_fault(fault(0x9000_0000, Access::READ))
            .unwrap_err();
        assert_eq!((e.kind, e.gpa), (FaultKind::Unmapped, Some(0x9000_0000)));
        let e = m
            .handle_fault(fault(0x100_2000, Access::WRITE))
            .unwrap_err();
        assert_eq!((e.kind, e.gpa), (FaultKind::Write, Some(0x100_2000)));
        let e = m
            .handle_fault(fault(0x100_2000, Access::EXECUTE))
            .unwrap_err();
        assert_eq!(e.kind, FaultKind::Exec);
        assert_eq!(m.faults_handled(), 2);
        m.protect(0x5000, 0x1000, Access::READ).unwrap();
        assert_eq!(m.write(0x5000, &[1]).unwrap_err().kind, FaultKind::Write);
        m.unmap(0x5000, 0x1000).unwrap();
        assert_eq!(
            read_u64(&mut m, 0x5000).unwrap_err().kind,
            FaultKind::Unmapped
        );
        assert_eq!(
            m.protect(0x5001, 0x1000, Access::READ).unwrap_err().kind,
            FaultKind::Hypercall
        );
        drop(m);
        assert_eq!(in_use(), 0);
    }

    #[test]
    fn quota_ends_in_a_quota_fault() {
        let mut m = memory("t.bin mem=16M quota=64K");
        let mut served = 0;
        let e = loop {
            match m.handle_fault(fault(0x1000 + served * 4096, Access::WRITE)) {
                Ok(()) => served += 1,
                Err(e) => break e,
            }
            assert!(served < 64, "quota never reached");
        };
        assert_eq!(e.kind, FaultKind::Quota);
        assert!(served >= 8, "only {served} pages before the quota");
        drop(m);
        assert_eq!(in_use(), 0);
    }

    #[test]
    fn clones_copy_ram_and_share_windows() {
        let mut parent = memory("t.bin mem=4M mmio=0x2000000+4K");
        parent.write(0x30_0000, &1u64.to_le_bytes()).unwrap();
        let mut child = parent.try_clone(FlushRequest::new()).unwrap();
        parent.write(0x30_0000, &2u64.to_le_bytes()).unwrap();
        assert_eq!(read_u64(&mut child, 0x30_0000), Ok(1));
        child.write(0x30_0000, &3u64.to_le_bytes()).unwrap();
        assert_eq!(read_u64(&mut parent, 0x30_0000), Ok(2));
        child.write(0x200_0000, &5u64.to_le_bytes()).unwrap();
        assert_eq!(
            read_u64(&mut parent, 0x200_0000),
            Ok(5),
            "windows are shared"
        );
        drop(parent);
        assert_eq!(
            read_u64(&mut child, 0x200_0000),
            Ok(5),
            "the window outlives the parent"
        );
        drop(child);
        assert_eq!(in_use(), 0);
    }

    #[test]
    fn oversized_windows_are_refused_without_leaking() {
        let settings = parse_guest_cmdline("t.bin mmio=0x2000000+4M").unwrap();
        let e = Mem::create(&settings, Stage2Caps::npt(false), FlushRequest::new())
            .err()
            .unwrap();
        assert!(e.detail.contains("limited"), "{}", e.detail);
        assert_eq!(in_use(), 0);
    }

    #[test]
    fn flushes_reach_the_vcpu_request() {
        let flush = FlushRequest::new();
        let settings = parse_guest_cmdline("t.bin").unwrap();
        let mut m = Mem::create(&settings, Stage2Caps::npt(false), flush.clone()).unwrap();
        m.write(0x5000, &[1]).unwrap();
        flush.take();
        m.protect(0x5000, 0x1000, Access::READ).unwrap();
        assert!(flush.take(), "protect must ask for an invalidation");
        m.unmap(0x5000, 0x1000).unwrap();
        assert!(flush.take(), "unmap must ask for an invalidation");
    }

    #[test]
    fn ept_misconfigurations_end_with_the_validators_explanation() {
        use ept::format::{ADDR_MASK, Ept};
        use ept::frame::PhysMapper;
        let settings = parse_guest_cmdline("t.bin").unwrap();
        let mut m = SpaceMemory::<Ept, ArenaMemory>::create(
            &settings,
            Stage2Caps::all(),
            FlushRequest::new(),
        )
        .unwrap();
        m.write(0x5000, &[1]).unwrap();
        let misconfig = Stage2Fault::from_ept_misconfig(0x5000);
        // A sound table: the hardware saw something stale, the validator says so.
        let e = m.handle_fault(misconfig).unwrap_err();
        assert_eq!(e.kind, FaultKind::Instruction);
        assert!(e.detail.ends_with("finds no bad entry"), "{}", e.detail);
        // Corrupt the root's first entry into write-without-read (SDM vol. 3C
        // 29.3.3.1): the walk of the GPA stops there, and the end says so.
        let root = HostPhysAddr::from((m.root_pointer() & ADDR_MASK) as usize);
        let entry = ArenaMemory::mapper().phys_to_virt(root).cast::<u64>();
        // SAFETY: `entry` is the first slot of this space's root table, an 8-byte
        // aligned word of a live arena frame that nothing else accesses right now.
        let original = unsafe { entry.read() };
        // SAFETY: as above.
        unsafe { entry.write(original & !Ept::READ) };
        let e = m.handle_fault(misconfig).unwrap_err();
        assert!(
            e.detail.contains("level-4 entry on the walk of") && e.detail.contains("write"),
            "{}",
            e.detail
        );
        // SAFETY: as above; the table is whole again before it is dropped.
        unsafe { entry.write(original) };
        drop(m);
        assert_eq!(in_use(), 0);
    }
}

/// Host policy, quotas and the hypercall-facing errors.
#[cfg(test)]
#[path = "space_memory_policy_tests.rs"]
mod policy_tests;
