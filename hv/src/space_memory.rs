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
use ept::frame::{FrameAlloc, read_phys, write_phys};
use ept::space::{AddressSpace, Invalidate, SpaceError};
use memory_set::{GuestPhysAddr, HostPhysAddr};

use crate::layout::{LOW_RAM_END, LOW_RAM_START};
use crate::memory::{GuestMemory, MemoryError, mmio_pattern, permission_kind};
use crate::outcome::FaultKind;
use crate::platform::{GlobalFrames, IdentityMapper};
use crate::settings::{AreaKind, GPA_LIMIT, GuestSettings};
use crate::vcpu::FlushRequest;

/// Largest linear window (one contiguous 2 MiB host block backs it).
pub const MAX_WINDOW: u64 = 2 << 20;

impl Invalidate for FlushRequest {
    fn invalidate(&mut self, _scope: FlushScope) {
        // Neither TLB_CONTROL nor INVEPT single-context is by address: flush the
        // guest's whole context before its next entry.
        self.request();
    }
}

/// A host buffer behind a linear window: one 2 MiB block, freed when the last space
/// mapping it (a guest and its clones) is gone.
struct HostWindow {
    gpa: u64,
    size: u64,
    block: HostPhysAddr,
}

impl Drop for HostWindow {
    fn drop(&mut self) {
        GlobalFrames.dealloc_2m(self.block);
    }
}

type Space<F> = AddressSpace<F, IdentityMapper, GlobalFrames, FlushRequest>;

/// A guest's memory as an address space.
pub struct SpaceMemory<F: Stage2Format> {
    // Field order matters: the space (and its mappings) goes before the windows'
    // host blocks.
    space: Space<F>,
    windows: Vec<Arc<HostWindow>>,
    quota_frames: usize,
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
        SpaceError::OutOfMemory { gpa, .. } => {
            (FaultKind::Quota, gpa.map(|g| usize::from(g) as u64).or(at))
        }
        SpaceError::Misconfigured { gpa } => {
            (FaultKind::Instruction, Some(usize::from(*gpa) as u64))
        }
        _ => (FaultKind::Hypercall, at),
    };
    MemoryError::new(kind, gpa, e.to_string())
}

impl<F: Stage2Format> SpaceMemory<F> {
    fn window_at(&self, at: u64) -> Option<&Arc<HostWindow>> {
        self.windows
            .iter()
            .find(|w| w.gpa <= at && at - w.gpa < w.size)
    }

    /// Copies between `buf` and a host window, one frame at a time.
    fn window_io(
        &self,
        at: u64,
        len: usize,
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

impl<F: Stage2Format> GuestMemory for SpaceMemory<F> {
    fn create(
        settings: &GuestSettings,
        caps: Stage2Caps,
        flush: FlushRequest,
    ) -> Result<Self, MemoryError> {
        // Without a quota a guest may use every host frame.
        let quota_frames = settings
            .quota
            .map_or(crate::platform::frame_usage().1, |q| (q / 4096) as usize);
        let mut space = Space::<F>::new(
            gpa(0),
            GPA_LIMIT as usize,
            caps,
            IdentityMapper,
            GlobalFrames,
            flush,
            quota_frames,
        )
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
                AreaKind::Mmio => {
                    if area.size > MAX_WINDOW {
                        return Err(MemoryError::new(
                            FaultKind::Quota,
                            Some(area.gpa),
                            format!("linear windows are limited to {} KiB", MAX_WINDOW >> 10),
                        ));
                    }
                    let block = GlobalFrames.alloc_2m().ok_or_else(|| {
                        MemoryError::new(
                            FaultKind::Quota,
                            Some(area.gpa),
                            "no 2 MiB host block for a linear window".into(),
                        )
                    })?;
                    let window = Arc::new(HostWindow {
                        gpa: area.gpa,
                        size: area.size,
                        block,
                    });
                    let mut page = [0u8; 4096];
                    for p in 0..area.size / 4096 {
                        for (i, chunk) in page.chunks_mut(8).enumerate() {
                            let offset = p * 4096 + i as u64 * 8;
                            chunk.copy_from_slice(&mmio_pattern(offset).to_le_bytes());
                        }
                        let hpa = HostPhysAddr::from(usize::from(block) + (p * 4096) as usize);
                        write_phys(&IdentityMapper, hpa, &page).map_err(|e| {
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
        Ok(Self {
            space,
            windows,
            quota_frames,
        })
    }

    fn root_pointer(&self) -> u64 {
        self.space.root_pointer()
    }

    fn handle_fault(&mut self, fault: Stage2Fault) -> Result<(), MemoryError> {
        let at = usize::from(fault.gpa) as u64;
        self.space
            .handle_fault(fault)
            .map(|_| ())
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn write(&mut self, at: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        if let Some(r) = self.window_io(at, bytes.len(), |hpa, range| {
            write_phys(&IdentityMapper, hpa, &bytes[range]).is_ok()
        }) {
            return r;
        }
        self.space
            .write(gpa(at), bytes)
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn read(&mut self, at: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut tmp = alloc::vec![0u8; buf.len()];
        if let Some(r) = self.window_io(at, buf.len(), |hpa, range| {
            read_phys(&IdentityMapper, hpa, &mut tmp[range]).is_ok()
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
        self.space
            .protect(gpa(at), size as usize, access)
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn unmap(&mut self, at: u64, size: u64) -> Result<(), MemoryError> {
        self.space
            .unmap(gpa(at), size as usize)
            .map_err(|e| memory_error(e, Some(at)))
    }

    fn try_clone(&mut self, flush: FlushRequest) -> Result<Self, MemoryError> {
        let space = self
            .space
            .try_clone_with(flush, self.quota_frames)
            .map_err(|e| memory_error(e, None))?;
        Ok(Self {
            space,
            windows: self.windows.clone(),
            quota_frames: self.quota_frames,
        })
    }

    fn faults_handled(&self) -> u64 {
        self.space.stats().faults_handled
    }

    fn report(&self) -> String {
        let mut s = format!("{}", self.space.report());
        s.truncate(s.trim_end().len());
        s
    }
}
