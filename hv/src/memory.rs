//! A guest's memory as the VM logic sees it: [`GuestMemory`].
//!
//! The VM logic (exits, hypercalls, reports) only needs these operations, so it does
//! not depend on how guest memory is managed. [`TableMemory`] implements them directly
//! on an `ept::Stage2Table`, with every area backed up front; the address-space
//! implementation adds on-demand faults, quotas and copy-on-write clones.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::marker::PhantomData;

use ept::caps::Stage2Caps;
use ept::fault::Stage2Fault;
use ept::format::{Access, LeafAttr, Stage2Format};
use ept::frame::{FrameAlloc, read_phys, write_phys, zero_frame};
use ept::size::{LeafSize, Size4K};
use ept::table::Stage2Table;
use memory_set::{GuestPhysAddr, HostPhysAddr};

use crate::outcome::FaultKind;
use crate::platform::{GlobalFrames, IdentityMapper};
use crate::settings::{AreaKind, GuestSettings};
use crate::vcpu::FlushRequest;

/// Why a memory operation failed, in the terms a guest's end is reported in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryError {
    /// The fault kind (for `expect=fault:KIND`).
    pub kind: FaultKind,
    /// The guest-physical address concerned, if any.
    pub gpa: Option<u64>,
    /// What happened, in words.
    pub detail: String,
}

impl MemoryError {
    /// A new error.
    pub fn new(kind: FaultKind, gpa: Option<u64>, detail: String) -> Self {
        Self { kind, gpa, detail }
    }
}

/// The value a linear (MMIO) window holds at host offset `offset` before the guest
/// runs: lets a guest check that it sees the host buffer, byte for byte.
pub fn mmio_pattern(offset: u64) -> u64 {
    0x4D4D_494F_0000_0000 | (offset & 0xFFFF_FFFF)
}

/// The fault kind of an access a mapping's rights refuse.
pub fn permission_kind(access: Access) -> FaultKind {
    if access.contains(Access::EXECUTE) {
        FaultKind::Exec
    } else if access.contains(Access::WRITE) {
        FaultKind::Write
    } else {
        FaultKind::Read
    }
}

/// One guest's stage-2 memory.
pub trait GuestMemory: Sized {
    /// Builds the memory that `settings` describe (RAM at 0, extra areas, windows).
    fn create(
        settings: &GuestSettings,
        caps: Stage2Caps,
        flush: FlushRequest,
    ) -> Result<Self, MemoryError>;
    /// The hardware root pointer (nCR3 or EPTP).
    fn root_pointer(&self) -> u64;
    /// Serves a stage-2 fault: `Ok` when the guest may retry the access.
    fn handle_fault(&mut self, fault: Stage2Fault) -> Result<(), MemoryError>;
    /// Writes guest memory (as the guest would; on-demand pages get backed).
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), MemoryError>;
    /// Reads guest memory.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Size of the stage-2 leaf mapping `gpa`, if mapped.
    fn leaf_size(&self, gpa: u64) -> Option<u64>;
    /// Changes the rights of `[gpa, gpa + size)`.
    fn protect(&mut self, gpa: u64, size: u64, access: Access) -> Result<(), MemoryError>;
    /// Removes `[gpa, gpa + size)`.
    fn unmap(&mut self, gpa: u64, size: u64) -> Result<(), MemoryError>;
    /// A copy-on-write clone for a new guest whose vCPU uses `flush`.
    fn try_clone(&mut self, flush: FlushRequest) -> Result<Self, MemoryError>;
    /// Stage-2 faults served so far.
    fn faults_handled(&self) -> u64;
    /// The stage-2 report: areas, leaves per size, table frames, faults (lines).
    fn report(&self) -> String;
}

#[derive(Debug, Clone, Copy)]
struct Area {
    gpa: u64,
    size: u64,
    attr: LeafAttr,
    mmio: bool,
}

/// Guest memory directly on a stage-2 table, every page backed up front by its own
/// 4 KiB frame. Faults are never served (any fault ends the guest), and there is no
/// copy-on-write clone.
pub struct TableMemory<F: Stage2Format> {
    table: Option<Stage2Table<F, IdentityMapper>>,
    areas: Vec<Area>,
    frames: Vec<HostPhysAddr>,
    flush: FlushRequest,
    quota_frames: Option<usize>,
    _format: PhantomData<F>,
}

fn no_memory(gpa: u64, what: &str) -> MemoryError {
    MemoryError::new(
        FaultKind::Quota,
        Some(gpa),
        format!("out of memory: {what}"),
    )
}

impl<F: Stage2Format> TableMemory<F> {
    fn table(&mut self) -> &mut Stage2Table<F, IdentityMapper> {
        self.table.as_mut().expect("the table lives until drop")
    }

    fn complete(&mut self, flush: ept::flush::Flush) {
        let request = self.flush.clone();
        let unmapped = flush.complete(|_| request.request(), &mut GlobalFrames);
        for leaf in unmapped.iter() {
            if let Some(i) = self.frames.iter().position(|&f| f == leaf.hpa) {
                GlobalFrames.dealloc_frame(self.frames.swap_remove(i));
            }
        }
    }

    fn back(&mut self, area: Area) -> Result<(), MemoryError> {
        for page in 0..area.size / 4096 {
            let gpa = area.gpa + page * 4096;
            if self.quota_frames.is_some_and(|q| self.frames.len() >= q) {
                return Err(MemoryError::new(
                    FaultKind::Quota,
                    Some(gpa),
                    format!("quota of {} frames exhausted", self.frames.len()),
                ));
            }
            let frame = GlobalFrames
                .alloc_frame()
                .ok_or_else(|| no_memory(gpa, "no free host frame"))?;
            self.frames.push(frame);
            zero_frame(&IdentityMapper, frame).map_err(|e| no_memory(gpa, &format!("{e:?}")))?;
            if area.mmio {
                let mut bytes = [0u8; 4096];
                for (i, chunk) in bytes.chunks_mut(8).enumerate() {
                    chunk.copy_from_slice(&mmio_pattern(page * 4096 + i as u64 * 8).to_le_bytes());
                }
                write_phys(&IdentityMapper, frame, &bytes)
                    .map_err(|e| no_memory(gpa, &format!("{e:?}")))?;
            }
            let flush = self
                .table()
                .map_page::<Size4K>(
                    &mut GlobalFrames,
                    GuestPhysAddr::from(gpa as usize),
                    frame,
                    area.attr,
                )
                .map_err(|e| no_memory(gpa, &format!("{e}")))?;
            self.complete(flush);
        }
        Ok(())
    }

    fn hpa_of(&self, gpa: u64) -> Result<HostPhysAddr, MemoryError> {
        let t = self
            .table
            .as_ref()
            .and_then(|t| t.translate(GuestPhysAddr::from(gpa as usize)))
            .ok_or_else(|| MemoryError::new(FaultKind::Unmapped, Some(gpa), "not mapped".into()))?;
        let offset = gpa as usize - usize::from(t.leaf_gpa);
        Ok(HostPhysAddr::from(usize::from(t.hpa) + offset))
    }
}

impl<F: Stage2Format> GuestMemory for TableMemory<F> {
    fn create(
        settings: &GuestSettings,
        caps: Stage2Caps,
        flush: FlushRequest,
    ) -> Result<Self, MemoryError> {
        let table = Stage2Table::new(IdentityMapper, &mut GlobalFrames, caps)
            .map_err(|e| no_memory(0, &format!("{e}")))?;
        let mut areas = alloc::vec![Area {
            gpa: 0,
            size: settings.mem,
            attr: LeafAttr::ram(Access::RWX),
            mmio: false,
        }];
        for a in &settings.areas {
            areas.push(match a.kind {
                AreaKind::Ram {
                    read,
                    write,
                    execute,
                    ..
                } => {
                    let mut access = Access::empty();
                    access.set(Access::READ, read);
                    access.set(Access::WRITE, write);
                    access.set(Access::EXECUTE, execute);
                    Area {
                        gpa: a.gpa,
                        size: a.size,
                        attr: LeafAttr::ram(access),
                        mmio: false,
                    }
                }
                AreaKind::Mmio => Area {
                    gpa: a.gpa,
                    size: a.size,
                    attr: LeafAttr::device(Access::RW),
                    mmio: true,
                },
            });
        }
        let mut this = Self {
            table: Some(table),
            areas: areas.clone(),
            frames: Vec::new(),
            flush,
            quota_frames: settings.quota.map(|q| (q / 4096) as usize),
            _format: PhantomData,
        };
        for area in areas {
            this.back(area)?;
        }
        Ok(this)
    }

    fn root_pointer(&self) -> u64 {
        self.table.as_ref().map_or(0, |t| t.root_pointer())
    }

    fn handle_fault(&mut self, fault: Stage2Fault) -> Result<(), MemoryError> {
        let gpa = usize::from(fault.gpa) as u64;
        let area = self
            .areas
            .iter()
            .find(|a| a.gpa <= gpa && gpa - a.gpa < a.size);
        Err(match area {
            None => MemoryError::new(FaultKind::Unmapped, Some(gpa), "no area here".into()),
            Some(a) if !a.attr.access.contains(fault.access) => MemoryError::new(
                permission_kind(fault.access),
                Some(gpa),
                format!(
                    "{:?} access to an area allowing {:?}",
                    fault.access, a.attr.access
                ),
            ),
            Some(_) => MemoryError::new(
                FaultKind::Unmapped,
                Some(gpa),
                format!("{:?} fault on a page that is not backed", fault.kind),
            ),
        })
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        while done < bytes.len() {
            let at = gpa + done as u64;
            let n = (4096 - (at % 4096) as usize).min(bytes.len() - done);
            let hpa = self.hpa_of(at)?;
            write_phys(&IdentityMapper, hpa, &bytes[done..done + n])
                .map_err(|e| MemoryError::new(FaultKind::Unmapped, Some(at), format!("{e:?}")))?;
            done += n;
        }
        Ok(())
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa + done as u64;
            let n = (4096 - (at % 4096) as usize).min(buf.len() - done);
            let hpa = self.hpa_of(at)?;
            read_phys(&IdentityMapper, hpa, &mut buf[done..done + n])
                .map_err(|e| MemoryError::new(FaultKind::Unmapped, Some(at), format!("{e:?}")))?;
            done += n;
        }
        Ok(())
    }

    fn leaf_size(&self, gpa: u64) -> Option<u64> {
        let t = self
            .table
            .as_ref()?
            .translate(GuestPhysAddr::from(gpa as usize))?;
        Some(t.size.size() as u64)
    }

    fn protect(&mut self, gpa: u64, size: u64, access: Access) -> Result<(), MemoryError> {
        let flush = self
            .table()
            .protect_range(
                &mut GlobalFrames,
                GuestPhysAddr::from(gpa as usize),
                size as usize,
                LeafAttr::ram(access),
            )
            .map_err(|e| MemoryError::new(FaultKind::Hypercall, Some(gpa), format!("{e}")))?;
        self.complete(flush);
        for a in &mut self.areas {
            if a.gpa <= gpa && gpa - a.gpa < a.size {
                a.attr.access = access;
            }
        }
        Ok(())
    }

    fn unmap(&mut self, gpa: u64, size: u64) -> Result<(), MemoryError> {
        let flush = self
            .table()
            .unmap_range(
                &mut GlobalFrames,
                GuestPhysAddr::from(gpa as usize),
                size as usize,
            )
            .map_err(|e| MemoryError::new(FaultKind::Hypercall, Some(gpa), format!("{e}")))?;
        self.complete(flush);
        Ok(())
    }

    fn try_clone(&mut self, _flush: FlushRequest) -> Result<Self, MemoryError> {
        Err(MemoryError::new(
            FaultKind::Hypercall,
            None,
            "this memory back-end cannot clone".into(),
        ))
    }

    fn faults_handled(&self) -> u64 {
        0
    }

    fn report(&self) -> String {
        let Some(t) = self.table.as_ref() else {
            return String::new();
        };
        let mut s = String::new();
        for a in &self.areas {
            s += &format!(
                "  area {:#012x}..{:#012x} {:>8} KiB {} {}\n",
                a.gpa,
                a.gpa + a.size,
                a.size >> 10,
                a.attr,
                if a.mmio { "linear" } else { "ram (populated)" }
            );
        }
        s += &format!(
            "  leaves: 4K {} 2M {} 1G {}; table frames {}; ram frames {}; faults handled 0",
            t.leaf_count(LeafSize::Size4K),
            t.leaf_count(LeafSize::Size2M),
            t.leaf_count(LeafSize::Size1G),
            t.table_frames(),
            self.frames.len()
        );
        s
    }
}

impl<F: Stage2Format> Drop for TableMemory<F> {
    fn drop(&mut self) {
        if let Some(table) = self.table.take() {
            let request = self.flush.clone();
            // Every leaf maps one of `self.frames`, all freed below.
            let _ = table
                .destroy()
                .complete(|_| request.request(), &mut GlobalFrames);
        }
        for frame in self.frames.drain(..) {
            GlobalFrames.dealloc_frame(frame);
        }
    }
}
