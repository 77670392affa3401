//! Model-based test of memory that moves between owners: random sequences of take
//! (unmap and keep), move (`map_bundle`), shared windows (`map_window`), balloon
//! (`discard`), zero-page read faults, guest stores through the table, hypervisor
//! reads and writes, unmaps, clones and drops, over up to three spaces and any number
//! of bundles sharing one heap arena, with allocation failures injected at random
//! points, against a plain page-granular reference.
//!
//! After every step: every space validates; the touched pages and every window page
//! of every space hold what the reference says (a store through a window is seen by
//! every space mapping it, a store to RAM by no other space); a failed operation
//! changed nothing (arena, frame counts, areas, bundles); without 2 MiB leaves the
//! frame accounting is exact: the arena holds the tables plus the distinct frames
//! that spaces map, bundles hold and zero pages are, and each space counts exactly
//! the distinct frames it maps (plus its zero page). At the end every page is
//! compared, everything is dropped and every frame must be back: no leak after any
//! sequence.
//!
//! `PROPTEST_CASES` raises the case count for longer local runs.

use std::collections::{BTreeMap, BTreeSet};

mod common;

use common::{caps_4k_only, g, new_space};
use ept::caps::Stage2Caps;
use ept::fault::{FaultKind, Stage2Fault};
use ept::flush::FlushScope;
use ept::format::{Access, Npt};
use ept::frame::{HeapArena, read_phys, write_phys};
use ept::space::{AddressSpace, BundleProblem, FrameBundle, Invalidate, SpaceError};
use memory_set::{HostPhysAddr, PAGE_SIZE_4K};
use proptest::prelude::*;

#[derive(Clone, Default)]
struct Inv;

impl Invalidate for Inv {
    fn invalidate(&mut self, _scope: FlushScope) {}
}

type Space = AddressSpace<Npt, HeapArena, HeapArena, Inv>;
type Bundle = FrameBundle<HeapArena>;

/// Pages in each space's window (4 MiB at GPA 0).
const PAGES: usize = 1024;
const ACCESSES: [Access; 3] = [Access::READ, Access::RW, Access::RWX];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ram,
    /// Page `page` of the window contents `content`.
    Window {
        content: usize,
        page: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageModel {
    kind: Kind,
    access: Access,
}

/// The reference for one space.
#[derive(Clone, Debug, Default)]
struct SpaceModel {
    /// Which family (a root space and its clones) the space belongs to.
    family: usize,
    pages: BTreeMap<usize, PageModel>,
    /// Non-zero bytes of RAM pages.
    bytes: BTreeMap<usize, u8>,
}

/// The reference for one bundle.
#[derive(Clone, Debug)]
struct BundleModel {
    pages: usize,
    /// Pages that have a frame.
    present: BTreeSet<usize>,
    /// Non-zero bytes (by offset) while it is not a window.
    bytes: BTreeMap<usize, u8>,
    /// The window contents once it was mapped as a window.
    content: Option<usize>,
}

fn bytes_in(map: &BTreeMap<usize, u8>, lo: usize, hi: usize) -> Vec<(usize, u8)> {
    map.range(lo..hi).map(|(&k, &v)| (k, v)).collect()
}

fn forget(map: &mut BTreeMap<usize, u8>, lo: usize, hi: usize) {
    for (k, _) in bytes_in(map, lo, hi) {
        map.remove(&k);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Fault {
        gpa: usize,
        access: usize,
    },
    Store {
        gpa: usize,
        seed: u8,
    },
    Write {
        gpa: usize,
        len: usize,
        seed: u8,
    },
    Read {
        gpa: usize,
        len: usize,
    },
    Discard {
        page: usize,
        pages: usize,
    },
    Populate {
        page: usize,
        pages: usize,
    },
    Take {
        page: usize,
        pages: usize,
    },
    /// Populate then take (how a host makes a window): a complete bundle.
    ShareOut {
        page: usize,
        pages: usize,
    },
    MapBundle {
        bundle: usize,
        page: usize,
        access: usize,
    },
    MapWindow {
        bundle: usize,
        page: usize,
        access: usize,
    },
    Unmap {
        page: usize,
        pages: usize,
    },
    Clone,
    DropSpace,
    DropBundle {
        bundle: usize,
    },
}

#[derive(Clone, Debug)]
struct Step {
    space: usize,
    op: Op,
    fail_after: Option<usize>,
}

fn page_start() -> impl Strategy<Value = usize> {
    prop_oneof![
        (0..2usize).prop_map(|b| b * 512),
        (0..PAGES),
        (0..8usize).prop_map(|i| 768 + i * 32),
    ]
}

fn page_count() -> impl Strategy<Value = usize> {
    prop_oneof![1..4usize, 1..64usize, Just(512usize)]
}

fn guest_addr() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0..768 * PAGE_SIZE_4K,
        2 => 768 * PAGE_SIZE_4K..PAGES * PAGE_SIZE_4K,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (guest_addr(), 0..3usize).prop_map(|(gpa, access)| Op::Fault { gpa, access }),
        5 => (guest_addr(), any::<u8>()).prop_map(|(gpa, seed)| Op::Store { gpa: gpa & !7, seed }),
        3 => (guest_addr(), 1..5000usize, any::<u8>())
            .prop_map(|(gpa, len, seed)| Op::Write { gpa, len, seed }),
        2 => (guest_addr(), 1..5000usize).prop_map(|(gpa, len)| Op::Read { gpa, len }),
        3 => (page_start(), page_count()).prop_map(|(page, pages)| Op::Discard { page, pages }),
        3 => (page_start(), page_count()).prop_map(|(page, pages)| Op::Populate { page, pages }),
        4 => (page_start(), page_count()).prop_map(|(page, pages)| Op::Take { page, pages }),
        3 => (page_start(), 1..8usize).prop_map(|(page, pages)| Op::ShareOut { page, pages }),
        3 => (0..4usize, page_start(), 0..3usize)
            .prop_map(|(bundle, page, access)| Op::MapBundle { bundle, page, access }),
        4 => (0..4usize, page_start(), 0..3usize)
            .prop_map(|(bundle, page, access)| Op::MapWindow { bundle, page, access }),
        2 => (page_start(), page_count()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => Just(Op::Clone),
        1 => Just(Op::DropSpace),
        1 => (0..4usize).prop_map(|bundle| Op::DropBundle { bundle }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..3usize,
        op(),
        prop_oneof![4 => Just(None), 1 => (0..5usize).prop_map(Some)],
    )
        .prop_map(|(space, op, fail_after)| Step {
            space,
            op,
            fail_after,
        })
}

/// Everything of the test: spaces and bundles with their references, the window
/// contents, the arena.
struct World {
    arena: HeapArena,
    spaces: Vec<(Space, SpaceModel)>,
    bundles: Vec<(Bundle, BundleModel)>,
    contents: Vec<BTreeMap<usize, u8>>,
}

impl World {
    /// What a space's byte at `gpa` should be.
    fn expected(&self, m: &SpaceModel, gpa: usize) -> u8 {
        match m.pages.get(&(gpa / PAGE_SIZE_4K)).map(|p| p.kind) {
            Some(Kind::Window { content, page }) => {
                let off = page * PAGE_SIZE_4K + gpa % PAGE_SIZE_4K;
                self.contents[content].get(&off).copied().unwrap_or(0)
            }
            _ => m.bytes.get(&gpa).copied().unwrap_or(0),
        }
    }

    fn check_page(&self, s: &Space, m: &SpaceModel, page: usize) -> Result<(), TestCaseError> {
        let t = s.translate(g(page * PAGE_SIZE_4K));
        let Some(pm) = m.pages.get(&page) else {
            prop_assert!(t.is_none(), "leaf at unmapped page {page:#x}");
            return Ok(());
        };
        let base = page * PAGE_SIZE_4K;
        let mut want = vec![0u8; PAGE_SIZE_4K];
        let (map, lo) = match pm.kind {
            Kind::Window { content, page } => (&self.contents[content], page * PAGE_SIZE_4K),
            Kind::Ram => (&m.bytes, base),
        };
        for (a, v) in map.range(lo..lo + PAGE_SIZE_4K) {
            want[a - lo] = *v;
        }
        match t {
            None => {
                prop_assert!(pm.kind == Kind::Ram, "window page {page:#x} absent");
                prop_assert!(
                    want.iter().all(|&b| b == 0),
                    "absent page {page:#x} holds data"
                );
            }
            Some(t) => {
                prop_assert!(pm.access.contains(t.attr.access), "leaf grants too much");
                if let Kind::Window { .. } = pm.kind {
                    prop_assert_eq!(t.attr.access, pm.access, "window rights");
                }
                let mut got = vec![0u8; PAGE_SIZE_4K];
                read_phys(&self.arena, t.hpa, &mut got).unwrap();
                prop_assert!(got == want, "contents of page {page:#x} differ");
            }
        }
        Ok(())
    }

    /// Frames: exact without 2 MiB leaves, bounds with them.
    fn check_frames(&self, exact: bool) -> Result<(), TestCaseError> {
        let mut distinct = BTreeSet::new();
        let mut tables = 0;
        for (s, m) in &self.spaces {
            let st = s.stats();
            prop_assert!(
                st.family_frames <= st.quota_frames,
                "family over quota: {st:?}"
            );
            tables += st.table_frames;
            let mut own = BTreeSet::new();
            for &page in m.pages.keys() {
                if let Some(t) = s.translate(g(page * PAGE_SIZE_4K)) {
                    own.insert(t.hpa.as_usize() & !(PAGE_SIZE_4K - 1));
                }
            }
            own.extend(s.zero_page().map(|z| z.as_usize()));
            if exact {
                prop_assert_eq!(st.ram_frames, own.len(), "ram_frames vs distinct frames");
            } else {
                prop_assert!(st.ram_frames >= own.len());
            }
            distinct.extend(own);
        }
        for (b, bm) in &self.bundles {
            prop_assert_eq!(b.pages_held(), bm.present.len());
            for &p in &bm.present {
                let hpa = b
                    .host_of(p * PAGE_SIZE_4K)
                    .expect("present page has a frame");
                distinct.insert(hpa.as_usize());
            }
        }
        if exact {
            prop_assert_eq!(self.arena.in_use(), tables + distinct.len(), "arena frames");
        } else {
            prop_assert!(self.arena.in_use() >= tables + distinct.len());
        }
        // Every host frame is charged to exactly one family (a bundle's to the family
        // it came from until it moves): with both families alive, their counts add
        // up to the arena exactly.
        let mut families: BTreeMap<usize, usize> = BTreeMap::new();
        for (s, m) in &self.spaces {
            let held = s.stats().family_frames;
            prop_assert!(held <= self.arena.capacity(), "family count underflow");
            if let Some(&h) = families.get(&m.family) {
                prop_assert_eq!(h, held, "one count per family");
            }
            families.insert(m.family, held);
        }
        let total: usize = families.values().sum();
        if families.len() == 2 {
            prop_assert_eq!(total, self.arena.in_use(), "family counts vs arena");
        } else {
            prop_assert!(total <= self.arena.in_use());
        }
        Ok(())
    }

    /// What a failed operation must not change.
    fn fingerprint(&self) -> (usize, Vec<String>, Vec<usize>) {
        (
            self.arena.in_use(),
            self.spaces
                .iter()
                .map(|(s, _)| {
                    let st = s.stats();
                    format!("{} {} {:?}", st.ram_frames, st.table_frames, s.areas())
                })
                .collect(),
            self.bundles.iter().map(|(b, _)| b.pages_held()).collect(),
        )
    }
}

/// Out of frames, or out of bookkeeping entries (the family budget): a legitimate
/// refusal that must change nothing.
fn is_oom(e: &SpaceError) -> bool {
    matches!(
        e,
        SpaceError::OutOfMemory { .. } | SpaceError::OutOfMetadata { .. }
    )
}

/// The reference's verdict on a range of pages for take / discard: `None` if every
/// page is RAM, else the error kind expected.
fn ram_range_problem(m: &SpaceModel, page: usize, pages: usize) -> Option<&'static str> {
    if page + pages > PAGES {
        return Some("range");
    }
    // A hole in the areas is found before the kind of any area.
    let pages = || (page..page + pages).map(|p| m.pages.get(&p));
    if pages().any(|p| p.is_none()) {
        return Some("unmapped");
    }
    pages()
        .any(|p| p.is_some_and(|p| p.kind != Kind::Ram))
        .then_some("not ram")
}

fn category(e: &SpaceError) -> &'static str {
    match e {
        SpaceError::NotMapped { .. } => "unmapped",
        SpaceError::NotRam { .. } => "not ram",
        SpaceError::InvalidRange { .. } => "range",
        SpaceError::AlreadyMapped { .. } => "overlap",
        SpaceError::PermissionDenied { .. } => "denied",
        SpaceError::OutOfMemory { .. } | SpaceError::OutOfMetadata { .. } => "oom",
        _ => "other",
    }
}

/// A guest store of 8 bytes at `gpa` through the table, faulting first as the CPU
/// would.
fn guest_store(w: &World, s: &mut Space, gpa: usize, v: u64) -> Result<(), SpaceError> {
    for _ in 0..4 {
        let t = s.translate(g(gpa));
        match t {
            Some(t) if t.attr.access.contains(Access::WRITE) => {
                write_phys(&w.arena, t.hpa, &v.to_le_bytes()).unwrap();
                return Ok(());
            }
            _ => {
                s.handle_fault(Stage2Fault {
                    gpa: g(gpa),
                    access: Access::WRITE,
                    kind: if t.is_some() {
                        FaultKind::Permission
                    } else {
                        FaultKind::NotPresent
                    },
                    in_guest_walk: false,
                })?;
            }
        }
    }
    panic!("a store at {gpa:#x} kept faulting");
}

fn run(steps: Vec<Step>, huge: bool, quota: usize) -> Result<(), TestCaseError> {
    let arena = HeapArena::new(8 * 512);
    let caps = if huge {
        Stage2Caps::all()
    } else {
        caps_4k_only()
    };
    // Two families (two root spaces; clones join their parent's), so frames move
    // and are shared between families as well as within one.
    let mut roots = Vec::new();
    for family in 0..2 {
        let mut root: Space = new_space(&arena, PAGES * PAGE_SIZE_4K, caps, Inv, quota);
        root.set_zero_page(true);
        root.map_alloc(g(0), 0x20_0000, Access::RW, false).unwrap();
        root.map_alloc(g(0x20_0000), 0x10_0000, Access::READ, false)
            .unwrap();
        let mut model = SpaceModel {
            family,
            ..SpaceModel::default()
        };
        for p in 0..768 {
            let access = if p < 512 { Access::RW } else { Access::READ };
            let kind = Kind::Ram;
            model.pages.insert(p, PageModel { kind, access });
        }
        roots.push((root, model));
    }
    let mut w = World {
        arena: arena.clone(),
        spaces: roots,
        bundles: Vec::new(),
        contents: Vec::new(),
    };
    for st in steps {
        if w.spaces.is_empty() {
            break;
        }
        let idx = st.space % w.spaces.len();
        let before = w.fingerprint();
        if let Some(n) = st.fail_after {
            arena.fail_after(n);
        }
        let mut touched: Vec<usize> = Vec::new();
        // A share-out is a populate (checked like any change) then a take.
        let op = match st.op.clone() {
            Op::ShareOut { page, pages } => {
                arena.clear_failures();
                let (s, _) = &mut w.spaces[idx];
                if s.populate_area(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K)
                    .is_err()
                {
                    prop_assert_eq!(w.fingerprint(), before, "failed populate");
                    continue;
                }
                touched.extend(page..(page + pages).min(PAGES));
                Op::Take { page, pages }
            }
            op => op,
        };
        let before = if matches!(st.op, Op::ShareOut { .. }) {
            let after_populate = w.fingerprint();
            if let Some(n) = st.fail_after {
                arena.fail_after(n);
            }
            after_populate
        } else {
            before
        };
        let result: Result<(), SpaceError> = match op {
            Op::Fault { gpa, access } => {
                let access = [Access::READ, Access::WRITE, Access::EXECUTE][access];
                let (s, m) = &mut w.spaces[idx];
                let page = gpa / PAGE_SIZE_4K;
                let present = s.translate(g(gpa)).is_some();
                let kind = if present {
                    FaultKind::Permission
                } else {
                    FaultKind::NotPresent
                };
                let r = s
                    .handle_fault(Stage2Fault {
                        gpa: g(gpa),
                        access,
                        kind,
                        in_guest_walk: false,
                    })
                    .map(|_| ());
                match (&r, m.pages.get(&page)) {
                    (Ok(()), Some(p)) => {
                        prop_assert!(p.access.contains(access));
                        let t = s.translate(g(gpa)).expect("mapped after a fault");
                        prop_assert!(t.attr.access.contains(access), "fault did not grant");
                    }
                    (Ok(()), None) => prop_assert!(false, "fault served outside areas"),
                    (Err(e), None) => prop_assert_eq!(category(e), "unmapped"),
                    (Err(e), Some(p)) if !p.access.contains(access) => {
                        prop_assert_eq!(category(e), "denied")
                    }
                    (Err(e), Some(_)) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.push(page);
                r
            }
            Op::Store { gpa, seed } => {
                let value = u64::from_le_bytes([seed | 1; 8]);
                let page = gpa / PAGE_SIZE_4K;
                let (mut s, mut m) = w.spaces.remove(idx);
                let r = guest_store(&w, &mut s, gpa, value);
                match (&r, m.pages.get(&page).copied()) {
                    (Ok(()), Some(p)) => {
                        prop_assert!(p.access.contains(Access::WRITE));
                        for i in 0..8 {
                            match p.kind {
                                Kind::Ram => {
                                    m.bytes.insert(gpa + i, seed | 1);
                                }
                                Kind::Window { content, page } => {
                                    let off = page * PAGE_SIZE_4K + gpa % PAGE_SIZE_4K + i;
                                    w.contents[content].insert(off, seed | 1);
                                }
                            }
                        }
                    }
                    (Ok(()), None) => prop_assert!(false, "store outside areas"),
                    (Err(e), None) => prop_assert_eq!(category(e), "unmapped"),
                    (Err(e), Some(p)) if !p.access.contains(Access::WRITE) => {
                        prop_assert_eq!(category(e), "denied")
                    }
                    (Err(e), Some(_)) => prop_assert!(is_oom(e), "{e}"),
                }
                w.spaces.insert(idx, (s, m));
                touched.push(page);
                // A store that only faulted in a page before failing is a served
                // fault, not a failed operation: compare contents, not state.
                arena.clear_failures();
                for (s, m) in &w.spaces {
                    w.check_page(s, m, page)?;
                }
                if r.is_err() {
                    continue;
                }
                r
            }
            Op::Write { gpa, len, seed } => {
                let len = len.min(PAGES * PAGE_SIZE_4K - gpa);
                let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect();
                let (s, m) = &mut w.spaces[idx];
                let r = s.write(g(gpa), &data);
                let pages = gpa / PAGE_SIZE_4K..=(gpa + len - 1) / PAGE_SIZE_4K;
                let problem = pages.clone().find_map(|p| match m.pages.get(&p) {
                    None => Some("unmapped"),
                    Some(pm) if !pm.access.contains(Access::WRITE) => Some("denied"),
                    Some(PageModel {
                        kind: Kind::Window { .. },
                        ..
                    }) => Some("not ram"),
                    _ => None,
                });
                match (&r, problem) {
                    (Ok(()), None) => {
                        for (i, &b) in data.iter().enumerate() {
                            m.bytes.insert(gpa + i, b);
                        }
                    }
                    (Ok(()), Some(p)) => prop_assert!(false, "write allowed despite {p}"),
                    (Err(e), Some(_)) => prop_assert!(
                        matches!(category(e), "unmapped" | "denied" | "not ram"),
                        "{e}"
                    ),
                    (Err(e), None) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(pages);
                r
            }
            Op::Read { gpa, len } => {
                let len = len.min(PAGES * PAGE_SIZE_4K - gpa);
                let (s, m) = &w.spaces[idx];
                let mut buf = vec![0xeeu8; len];
                let r = s.read(g(gpa), &mut buf);
                let ok = (gpa / PAGE_SIZE_4K..=(gpa + len - 1) / PAGE_SIZE_4K).all(|p| {
                    m.pages
                        .get(&p)
                        .is_some_and(|pm| pm.kind == Kind::Ram && pm.access.contains(Access::READ))
                });
                match &r {
                    Ok(()) => {
                        prop_assert!(ok, "read allowed");
                        let want: Vec<u8> = (gpa..gpa + len).map(|a| w.expected(m, a)).collect();
                        prop_assert!(buf == want, "read back differs");
                    }
                    Err(e) => prop_assert!(!ok, "read failed: {e}"),
                }
                r
            }
            Op::Discard { page, pages } => {
                let (s, m) = &mut w.spaces[idx];
                let r = s.discard(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K);
                match (&r, ram_range_problem(m, page, pages)) {
                    (Ok(_), None) => {
                        forget(
                            &mut m.bytes,
                            page * PAGE_SIZE_4K,
                            (page + pages) * PAGE_SIZE_4K,
                        );
                        for p in page..page + pages {
                            prop_assert!(s.translate(g(p * PAGE_SIZE_4K)).is_none());
                        }
                    }
                    (Ok(_), Some(p)) => prop_assert!(false, "discard despite {p}"),
                    (Err(e), Some(p)) => prop_assert_eq!(category(e), p),
                    (Err(e), None) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(page.saturating_sub(1)..(page + pages + 1).min(PAGES));
                r.map(|_| ())
            }
            Op::Populate { page, pages } => {
                let (s, m) = &mut w.spaces[idx];
                let r = s.populate_area(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K);
                match (&r, ram_range_problem(m, page, pages)) {
                    (Ok(()), None) => {
                        for p in page..page + pages {
                            prop_assert!(s.translate(g(p * PAGE_SIZE_4K)).is_some());
                        }
                    }
                    (Ok(()), Some(p)) => prop_assert!(false, "populated despite {p}"),
                    (Err(e), Some(p)) => prop_assert_eq!(category(e), p),
                    (Err(e), None) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(page..(page + pages).min(PAGES));
                r
            }
            Op::Take { page, pages } => {
                let (s, m) = &mut w.spaces[idx];
                let zero = s.zero_page();
                let present: BTreeSet<usize> = (0..pages)
                    .filter(|&i| {
                        s.translate(g((page + i) * PAGE_SIZE_4K))
                            .is_some_and(|t| Some(t.hpa) != zero)
                    })
                    .collect();
                let r = s.take(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K);
                match (r, ram_range_problem(m, page, pages)) {
                    (Ok(b), None) => {
                        let (lo, hi) = (page * PAGE_SIZE_4K, (page + pages) * PAGE_SIZE_4K);
                        let bytes = bytes_in(&m.bytes, lo, hi)
                            .into_iter()
                            .map(|(a, v)| (a - lo, v))
                            .collect();
                        forget(&mut m.bytes, lo, hi);
                        for p in page..page + pages {
                            m.pages.remove(&p);
                        }
                        let bm = BundleModel {
                            pages,
                            present,
                            bytes,
                            content: None,
                        };
                        w.bundles.push((b, bm));
                        touched.extend(page.saturating_sub(1)..(page + pages + 1).min(PAGES));
                        Ok(())
                    }
                    (Ok(_), Some(p)) => {
                        prop_assert!(false, "take despite {p}");
                        Ok(())
                    }
                    (Err(e), Some(p)) => {
                        prop_assert_eq!(category(&e), p);
                        Err(e)
                    }
                    (Err(e), None) => {
                        prop_assert!(is_oom(&e), "{e}");
                        Err(e)
                    }
                }
            }
            Op::MapBundle {
                bundle,
                page,
                access,
            } => {
                if w.bundles.is_empty() {
                    continue;
                }
                let bi = bundle % w.bundles.len();
                let access = ACCESSES[access];
                let (b, bm) = w.bundles.remove(bi);
                let (s, m) = &mut w.spaces[idx];
                let free = page + bm.pages <= PAGES
                    && (page..page + bm.pages).all(|p| !m.pages.contains_key(&p));
                match s.map_bundle(g(page * PAGE_SIZE_4K), b, access) {
                    Ok(()) => {
                        prop_assert!(free, "mapped over something");
                        let bytes = match bm.content {
                            Some(c) => w.contents[c].clone(),
                            None => bm.bytes.clone(),
                        };
                        for (off, v) in bytes {
                            if off < bm.pages * PAGE_SIZE_4K {
                                m.bytes.insert(page * PAGE_SIZE_4K + off, v);
                            }
                        }
                        for p in page..page + bm.pages {
                            let kind = Kind::Ram;
                            m.pages.insert(p, PageModel { kind, access });
                        }
                        touched.extend(page..page + bm.pages);
                        Ok(())
                    }
                    Err((b, e)) => {
                        prop_assert_eq!(b.pages_held(), bm.present.len(), "bundle came back");
                        if bm.content.is_some() {
                            prop_assert_eq!(
                                &e,
                                &SpaceError::Bundle {
                                    problem: BundleProblem::IsWindow
                                }
                            );
                        } else if free {
                            prop_assert!(is_oom(&e), "{e}");
                        } else {
                            prop_assert!(matches!(category(&e), "overlap" | "range"), "{e}");
                        }
                        w.bundles.insert(bi, (b, bm));
                        Err(e)
                    }
                }
            }
            Op::MapWindow {
                bundle,
                page,
                access,
            } => {
                if w.bundles.is_empty() {
                    continue;
                }
                let bi = bundle % w.bundles.len();
                let access = ACCESSES[access];
                let (b, bm) = &mut w.bundles[bi];
                let (s, m) = &mut w.spaces[idx];
                let free = page + bm.pages <= PAGES
                    && (page..page + bm.pages).all(|p| !m.pages.contains_key(&p));
                let complete = bm.present.len() == bm.pages;
                match s.map_window(g(page * PAGE_SIZE_4K), b, access) {
                    Ok(()) => {
                        prop_assert!(free && complete);
                        let content = match bm.content {
                            Some(c) => c,
                            None => {
                                w.contents.push(std::mem::take(&mut bm.bytes));
                                w.contents.len() - 1
                            }
                        };
                        bm.content = Some(content);
                        for i in 0..bm.pages {
                            let kind = Kind::Window { content, page: i };
                            m.pages.insert(page + i, PageModel { kind, access });
                        }
                        touched.extend(page..page + bm.pages);
                        Ok(())
                    }
                    Err(e) => {
                        match e {
                            SpaceError::Bundle {
                                problem: BundleProblem::Hole { offset },
                            } => prop_assert!(
                                !complete && !bm.present.contains(&(offset / PAGE_SIZE_4K))
                            ),
                            SpaceError::Bundle {
                                problem: BundleProblem::CopyOnWrite { .. },
                            } => prop_assert!(complete && bm.content.is_none()),
                            ref e if !complete => prop_assert!(false, "hole not seen: {e}"),
                            ref e if free => prop_assert!(is_oom(e), "{e}"),
                            ref e => {
                                prop_assert!(matches!(category(e), "overlap" | "range"), "{e}")
                            }
                        }
                        Err(e)
                    }
                }
            }
            Op::Unmap { page, pages } => {
                let (s, m) = &mut w.spaces[idx];
                let r = s.unmap(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K);
                match &r {
                    Ok(()) => {
                        for p in page..page + pages {
                            m.pages.remove(&p);
                        }
                        forget(
                            &mut m.bytes,
                            page * PAGE_SIZE_4K,
                            (page + pages) * PAGE_SIZE_4K,
                        );
                    }
                    Err(e) if page + pages > PAGES => prop_assert_eq!(category(e), "range"),
                    Err(e) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(page.saturating_sub(1)..(page + pages + 1).min(PAGES));
                r
            }
            Op::Clone => {
                if w.spaces.len() >= 3 {
                    continue;
                }
                let (s, m) = &w.spaces[idx];
                match s.try_clone() {
                    Ok(c) => {
                        let m = m.clone();
                        w.spaces.push((c, m));
                        Ok(())
                    }
                    Err(e) => {
                        prop_assert!(is_oom(&e), "{e}");
                        Err(e)
                    }
                }
            }
            Op::DropSpace => {
                w.spaces.remove(idx);
                arena.clear_failures();
                w.check_frames(!huge)?;
                continue;
            }
            Op::ShareOut { .. } => unreachable!("rewritten into a take"),
            Op::DropBundle { bundle } => {
                if !w.bundles.is_empty() {
                    let bi = bundle % w.bundles.len();
                    w.bundles.remove(bi);
                }
                arena.clear_failures();
                w.check_frames(!huge)?;
                continue;
            }
        };
        arena.clear_failures();
        if let Err(e) = &result {
            prop_assert_eq!(
                w.fingerprint(),
                before,
                "failed op changed something: {}",
                e
            );
        }
        for (s, m) in &w.spaces {
            s.validate().map_err(TestCaseError::fail)?;
            let windows = m
                .pages
                .iter()
                .filter(|(_, p)| matches!(p.kind, Kind::Window { .. }))
                .map(|(&p, _)| p);
            for p in touched.iter().copied().chain(windows) {
                w.check_page(s, m, p)?;
            }
        }
        w.check_frames(!huge)?;
    }
    for (s, m) in &w.spaces {
        for p in 0..PAGES {
            w.check_page(s, m, p)?;
        }
    }
    drop(w);
    prop_assert_eq!(arena.in_use(), 0, "frames leaked at teardown");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::proptest_cases(48), ..ProptestConfig::default() })]

    #[test]
    fn sharing_model_4k_exact_accounting(
        steps in proptest::collection::vec(step(), 1..60),
        quota in prop_oneof![Just(48usize), Just(300usize), Just(3000usize)],
    ) {
        run(steps, false, quota)?;
    }

    #[test]
    fn sharing_model_with_huge_leaves(
        steps in proptest::collection::vec(step(), 1..60),
        quota in prop_oneof![Just(700usize), Just(3000usize)],
    ) {
        run(steps, true, quota)?;
    }
}

#[test]
fn host_addresses_are_page_aligned() {
    assert_eq!(HostPhysAddr::new(0x1000).as_usize() % PAGE_SIZE_4K, 0);
}
