//! This project's side of every workload (wired in as the crates land on main).

use ept::space::{AddressSpace, FaultOutcome};
use ept::{
    Access, Ept, FaultKind, FlushScope, HeapArena, LeafAttr, LeafSize, Stage2Caps, Stage2Fault,
    Stage2Table,
};
use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, MappingBackend, MemoryArea, MemorySet};

use crate::arena::{Arena, SIZE_2M, SIZE_4K};
use crate::harness::{Recorder, Who};
use crate::w1::{GPA, HPA, LEAVES_2M, Leaf, PAGES, SIZE, gpa_of};
use crate::w3::{
    AREA, AREAS, Answers, BASE, CUT, FREE_LARGE, FREE_SMALL, Inputs, LIMIT, PROT, Pass, SLOT,
};
use crate::w4::Mode;

/// A `memory_set` backend that does no page-table work (W3 measures bookkeeping alone).
#[derive(Clone)]
pub struct NopBackend;

impl MappingBackend for NopBackend {
    type Addr = GuestPhysAddr;
    type Flags = u8;
    type PageTable = ();
    type Error = core::convert::Infallible;

    fn map(&self, _: GuestPhysAddr, _: usize, _: u8, _: &mut ()) -> Result<(), Self::Error> {
        Ok(())
    }

    fn unmap(&self, _: GuestPhysAddr, _: usize, _: &mut ()) -> Result<(), Self::Error> {
        Ok(())
    }

    fn protect(
        &self,
        _: GuestPhysAddr,
        _: usize,
        _: u8,
        _: u8,
        _: &mut (),
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    fn handle_fault(
        &self,
        _: AddrRange<GuestPhysAddr>,
        _: u8,
        _: GuestPhysAddr,
        _: u8,
        _: &mut (),
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// One W3 pass over our `memory_set` (see [`Pass`]); the lookups pass returns its
/// answers.
pub fn w3(rec: &mut Recorder, inp: &Inputs, pass: Pass) -> Option<Answers> {
    let gpa = GuestPhysAddr::new;
    let mut set = MemorySet::<NopBackend>::new();
    const RW: u8 = 3;
    let mut insert = || {
        for &i in &inp.insert {
            let area = MemoryArea::new(gpa(BASE + i * SLOT), AREA, RW, NopBackend).expect("area");
            set.map(area, &mut (), false).expect("insert");
        }
    };
    if pass == Pass::Cuts {
        insert();
        return cuts(rec, &mut set, inp);
    }
    rec.time("W3/insert", Who::Ours, AREAS, insert);
    let hits = rec.time("W3/find", Who::Ours, inp.finds.len(), || {
        inp.finds
            .iter()
            .filter(|&&a| set.find(gpa(a)).is_some())
            .count()
    });
    let limit = AddrRange::from_start_size(gpa(LIMIT.0), LIMIT.1).expect("limit");
    let small = rec.time("W3/free_small", Who::Ours, inp.hints_small.len(), || {
        inp.hints_small.iter().fold(0, |acc, &h| {
            acc ^ set
                .find_free_area(gpa(h), FREE_SMALL, limit, FREE_SMALL)
                .expect("free")
                .as_usize()
        })
    });
    let large = rec.time("W3/free_large", Who::Ours, inp.hints_large.len(), || {
        inp.hints_large.iter().fold(0, |acc, &h| {
            acc ^ set
                .find_free_area(gpa(h), FREE_LARGE, limit, FREE_SMALL)
                .expect("free")
                .as_usize()
        })
    });
    assert_eq!(set.len(), AREAS);
    Some(Answers { hits, small, large })
}

/// The second W3 pass over our set (its areas inserted, not timed): middle cuts, then
/// protects that split.
fn cuts(rec: &mut Recorder, set: &mut MemorySet<NopBackend>, inp: &Inputs) -> Option<Answers> {
    let gpa = GuestPhysAddr::new;
    const RO: u8 = 1;
    rec.time("W3/unmap_middle", Who::Ours, AREAS, || {
        for &i in &inp.unmap {
            set.unmap(gpa(BASE + i * SLOT + CUT.0), CUT.1, &mut ())
                .expect("unmap");
        }
    });
    assert_eq!(set.len(), 2 * AREAS);
    rec.time("W3/protect", Who::Ours, AREAS, || {
        for &i in &inp.protect {
            set.protect(gpa(BASE + i * SLOT + PROT.0), PROT.1, |_| Some(RO), &mut ())
                .expect("protect");
        }
    });
    assert_eq!(set.len(), 3 * AREAS);
    None
}

/// W4 over our address space: one 1 GiB on-demand RAM area; every touch of a page not
/// yet covered is a `NotPresent` write fault served by `AddressSpace::handle_fault`
/// (find the area, allocate, zero, map, complete the flush). In `Small` mode the
/// capabilities offer no 2 MiB leaves, so each fault maps one 4 KiB page.
pub fn w4(rec: &mut Recorder, arena: &Arena, mode: Mode, order: &[usize]) {
    let caps = match mode {
        Mode::Small => Stage2Caps {
            leaf_2m: false,
            leaf_1g: false,
            ..Stage2Caps::all()
        },
        Mode::Huge => Stage2Caps::all(),
    };
    let heap = arena.heap();
    let window = GPA + SIZE;
    let mut space = AddressSpace::<Ept, _, _, _>::new(
        GuestPhysAddr::new(0),
        window,
        caps,
        heap.clone(),
        heap.clone(),
        |_: FlushScope| {},
        usize::MAX,
    )
    .expect("space");
    space
        .map_alloc(
            GuestPhysAddr::new(GPA),
            SIZE,
            Access::READ | Access::WRITE,
            false,
        )
        .expect("area");
    let mut covered = vec![false; PAGES];
    let mapped = rec.time(mode.id(), Who::Ours, PAGES, || {
        crate::w4::touch_all(order, mode, &mut covered, |i| {
            let fault = Stage2Fault {
                gpa: GuestPhysAddr::new(GPA + i * SIZE_4K),
                access: Access::WRITE,
                kind: FaultKind::NotPresent,
                in_guest_walk: false,
            };
            match space.handle_fault(fault).expect("fault") {
                FaultOutcome::Populated { size } => size.size() / SIZE_4K,
                other => panic!("W4: unexpected fault outcome {other:?}"),
            }
        })
    });
    assert_eq!(mapped, PAGES, "every page faulted in once");
    let stats = space.stats();
    assert_eq!(stats.ram_frames, PAGES);
    let expected = match mode {
        Mode::Small => (PAGES, 0),
        Mode::Huge => (0, LEAVES_2M),
    };
    assert_eq!(
        (stats.leaves_4k, stats.leaves_2m),
        expected,
        "{mode:?}: leaf sizes"
    );
    drop(space);
}

/// Our stage-2 table over the shared arena (EPT format; NPT shares the code paths).
type Table = Stage2Table<Ept, HeapArena>;

/// Read, write, execute RAM.
const RWX: LeafAttr = LeafAttr::ram(Access::READ.union(Access::WRITE).union(Access::EXECUTE));

/// A fresh table over `arena`, and the allocator handle to pass to it.
fn new_table(arena: &Arena) -> (Table, HeapArena) {
    let mut heap = arena.heap();
    let table = Table::new(heap.clone(), &mut heap, Stage2Caps::all()).expect("root");
    (table, heap)
}

/// Completes a flush of a table nobody runs on (nothing to invalidate), returning the
/// number of leaves it unmapped.
fn complete(flush: ept::Flush, heap: &mut HeapArena) -> usize {
    flush.complete(|_| {}, heap).len()
}

/// W1 (4 KiB leaves) and W2 (2 MiB leaves) over our table: `map_range`, a
/// `TranslateCursor` over every page in order, `translate` of each page in random
/// order, `unmap_range` (which frees emptied tables), each flush completed.
pub struct OursW1 {
    table: Option<Table>,
    heap: HeapArena,
}

impl OursW1 {
    /// An empty table over `arena`.
    pub fn new(arena: &Arena) -> Self {
        let (table, heap) = new_table(arena);
        OursW1 {
            table: Some(table),
            heap,
        }
    }

    fn table(&self) -> &Table {
        self.table.as_ref().expect("a table until drop")
    }
}

impl Drop for OursW1 {
    fn drop(&mut self) {
        if let Some(table) = self.table.take() {
            let _ = complete(table.destroy(), &mut self.heap);
        }
    }
}

impl crate::w1::Contender for OursW1 {
    const WHO: Who = Who::Ours;

    fn map(&mut self, leaf: Leaf) {
        let max = match leaf {
            Leaf::Small => LeafSize::Size4K,
            Leaf::Huge => LeafSize::Size2M,
        };
        let table = self.table.as_mut().expect("a table");
        let flush = table
            .map_range(
                &mut self.heap,
                GuestPhysAddr::new(GPA),
                HostPhysAddr::new(HPA),
                SIZE,
                RWX,
                max,
            )
            .expect("map");
        complete(flush, &mut self.heap);
    }

    fn translate_all(&mut self) -> usize {
        let mut cursor = self.table().translate_cursor();
        (0..PAGES).fold(0, |acc, i| {
            let t = cursor.translate(GuestPhysAddr::new(gpa_of(i)));
            acc ^ t.expect("mapped").hpa.as_usize()
        })
    }

    fn translate_each(&mut self, order: &[u32]) -> usize {
        let table = self.table();
        order.iter().fold(0, |acc, &i| {
            let t = table.translate(GuestPhysAddr::new(gpa_of(i as usize)));
            acc ^ t.expect("mapped").hpa.as_usize()
        })
    }

    fn unmap(&mut self, leaf: Leaf) {
        let table = self.table.as_mut().expect("a table");
        let flush = table
            .unmap_range(&mut self.heap, GuestPhysAddr::new(GPA), SIZE)
            .expect("unmap");
        assert_eq!(complete(flush, &mut self.heap), leaf.leaves());
    }

    fn leaf_bytes(&mut self) -> usize {
        let t = self.table().translate(GuestPhysAddr::new(GPA));
        t.expect("mapped").size.size()
    }

    fn reset(&mut self) {
        assert_eq!(self.table().table_frames(), 1, "unmap left tables behind");
    }
}

/// W5 over our table: 1 GiB in 2 MiB leaves, then one 4 KiB page of each leaf made
/// read-only (each `protect_range` splits one leaf), each flush completed.
pub fn w5(rec: &mut Recorder, arena: &Arena) {
    let (mut table, mut heap) = new_table(arena);
    let gpa = |off: usize| GuestPhysAddr::new(GPA + off);
    let flush = table
        .map_range(
            &mut heap,
            gpa(0),
            HostPhysAddr::new(HPA),
            SIZE,
            RWX,
            LeafSize::Size2M,
        )
        .expect("map");
    let _ = complete(flush, &mut heap);
    let ro = LeafAttr::ram(Access::READ);
    rec.time(crate::w5::ID, Who::Ours, LEAVES_2M, || {
        for k in 0..LEAVES_2M {
            let at = gpa(k * SIZE_2M + crate::w5::page_in_leaf(k));
            let flush = table
                .protect_range(&mut heap, at, SIZE_4K, ro)
                .expect("protect");
            let _ = complete(flush, &mut heap);
        }
    });
    assert_eq!(
        table.leaf_count(LeafSize::Size4K),
        PAGES,
        "every leaf split"
    );
    for k in [0, 1, LEAVES_2M - 1] {
        let page = k * SIZE_2M + crate::w5::page_in_leaf(k);
        assert_eq!(table.translate(gpa(page)).expect("mapped").attr, ro);
        let other = k * SIZE_2M + (page + SIZE_4K) % SIZE_2M;
        let t = table.translate(gpa(other)).expect("mapped");
        assert_eq!((t.attr, t.hpa.as_usize()), (RWX, HPA + other));
    }
    let flush = table.unmap_range(&mut heap, gpa(0), SIZE).expect("unmap");
    let _ = complete(flush, &mut heap);
    let _ = complete(table.destroy(), &mut heap);
}
