//! Model-based test of the guest address space: random sequences of every operation
//! (map RAM / linear windows, unmap, protect, populate, faults, guest reads and writes,
//! clones, drops, clear) over several spaces sharing one heap arena, with allocation
//! failures injected at random points, against a plain page-granular reference.
//!
//! After every step: areas and rights match the reference page by page; the touched
//! pages' contents, read back through the table on the arena, match the reference
//! bytes; the space validator passes; frame counts are exact (without 2 MiB leaves:
//! arena frames = tables + distinct RAM frames of all spaces); a failed operation
//! changed nothing. At the end every page is compared and every frame must come back.
//!
//! `PROPTEST_CASES` raises the case count for longer local runs.

use std::collections::{BTreeMap, BTreeSet};

mod common;

use common::{caps_4k_only, g, new_space};
use ept::caps::Stage2Caps;
use ept::fault::{FaultKind, Stage2Fault};
use ept::flush::FlushScope;
use ept::format::{Access, MemType, Npt};
use ept::frame::{HeapArena, read_phys};
use ept::space::{AddressSpace, Invalidate, OomReason, SpaceError};
use memory_set::{HostPhysAddr, PAGE_SIZE_4K};
use proptest::prelude::*;

#[derive(Clone, Default)]
struct Inv;

impl Invalidate for Inv {
    fn invalidate(&mut self, _scope: FlushScope) {}
}

type Space = AddressSpace<Npt, HeapArena, HeapArena, Inv>;

/// Pages in each space's window (8 MiB at GPA 0).
const PAGES: usize = 2048;
/// Where linear windows point (never a frame of the arena, never read).
const HOST_WINDOW: usize = 0x40_0000_0000;
const ACCESSES: [Access; 4] = [Access::READ, Access::RW, Access::RX, Access::RWX];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ram,
    Linear { host_page: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageModel {
    kind: Kind,
    access: Access,
    /// The rights the page was mapped with: protect may never go above them.
    ceiling: Access,
}

/// The reference for one space: what each page is, and every non-zero byte.
#[derive(Clone, Debug, Default)]
struct Model {
    pages: BTreeMap<usize, PageModel>,
    bytes: BTreeMap<usize, u8>,
}

impl Model {
    fn page_bytes(&self, page: usize) -> Vec<u8> {
        let mut v = vec![0u8; PAGE_SIZE_4K];
        let base = page * PAGE_SIZE_4K;
        for (&a, &b) in self.bytes.range(base..base + PAGE_SIZE_4K) {
            v[a - base] = b;
        }
        v
    }

    fn forget_bytes(&mut self, page: usize, pages: usize) {
        let lo = page * PAGE_SIZE_4K;
        let hi = (page + pages) * PAGE_SIZE_4K;
        let keys: Vec<usize> = self.bytes.range(lo..hi).map(|(&k, _)| k).collect();
        for k in keys {
            self.bytes.remove(&k);
        }
    }

    /// Why a byte access to `[gpa, gpa + len)` needing `access` fails, if it does:
    /// "unmapped", "denied" or "host window".
    fn access_problem(&self, gpa: usize, len: usize, access: Access) -> Option<&'static str> {
        let mut problems = BTreeSet::new();
        for page in gpa / PAGE_SIZE_4K..=(gpa + len - 1) / PAGE_SIZE_4K {
            match self.pages.get(&page) {
                None => {
                    problems.insert("unmapped");
                }
                Some(p) if !p.access.contains(access) => {
                    problems.insert("denied");
                }
                Some(PageModel {
                    kind: Kind::Linear { .. },
                    ..
                }) => {
                    problems.insert("host window");
                }
                Some(_) => {}
            }
        }
        problems.into_iter().next()
    }
}

#[derive(Clone, Debug)]
enum Op {
    MapAlloc {
        page: usize,
        pages: usize,
        access: usize,
        populate: bool,
    },
    MapLinear {
        page: usize,
        pages: usize,
        access: usize,
        host_page: usize,
    },
    Unmap {
        page: usize,
        pages: usize,
    },
    Protect {
        page: usize,
        pages: usize,
        access: usize,
    },
    Populate {
        page: usize,
        pages: usize,
    },
    Fault {
        gpa: usize,
        access: usize,
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
    Clone,
    Drop,
    Clear,
}

#[derive(Clone, Debug)]
struct Step {
    space: usize,
    op: Op,
    fail_after: Option<usize>,
}

fn page_start() -> impl Strategy<Value = usize> {
    prop_oneof![
        (0..4usize).prop_map(|b| b * 512),
        (0..4usize, 0..512usize).prop_map(|(b, o)| b * 512 + o),
        (0..PAGES),
    ]
}

/// Guest addresses, mostly inside the areas every run starts with.
fn guest_addr() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0..2 * 512 * PAGE_SIZE_4K,
        1 => 0..PAGES * PAGE_SIZE_4K,
    ]
}

fn page_count() -> impl Strategy<Value = usize> {
    prop_oneof![Just(512usize), 1..8usize, 1..700usize]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (page_start(), page_count(), 0..4usize, any::<bool>()).prop_map(
            |(page, pages, access, populate)| Op::MapAlloc { page, pages, access, populate }
        ),
        1 => (page_start(), page_count(), 0..4usize, 0..1024usize).prop_map(
            |(page, pages, access, host_page)| Op::MapLinear { page, pages, access, host_page }
        ),
        2 => (page_start(), page_count()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page_start(), page_count(), 0..4usize)
            .prop_map(|(page, pages, access)| Op::Protect { page, pages, access }),
        2 => (page_start(), page_count()).prop_map(|(page, pages)| Op::Populate { page, pages }),
        6 => (guest_addr(), 0..3usize).prop_map(|(gpa, access)| Op::Fault { gpa, access }),
        5 => (guest_addr(), 1..6000usize, any::<u8>())
            .prop_map(|(gpa, len, seed)| Op::Write { gpa, len, seed }),
        3 => (guest_addr(), 1..6000usize).prop_map(|(gpa, len)| Op::Read { gpa, len }),
        2 => Just(Op::Clone),
        1 => Just(Op::Drop),
        1 => Just(Op::Clear),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..3usize,
        op(),
        prop_oneof![3 => Just(None), 1 => (0..6usize).prop_map(Some)],
    )
        .prop_map(|(space, op, fail_after)| Step {
            space,
            op,
            fail_after,
        })
}

/// What a failed operation must not change.
fn snapshot(s: &Space) -> (usize, usize, String) {
    let st = s.stats();
    (st.ram_frames, st.table_frames, format!("{:?}", s.areas()))
}

fn check_page(s: &Space, arena: &HeapArena, m: &Model, page: usize) -> Result<(), TestCaseError> {
    let gpa = g(page * PAGE_SIZE_4K);
    let t = s.translate(gpa);
    match (m.pages.get(&page), t) {
        (None, t) => prop_assert!(t.is_none(), "leaf at unmapped page {page:#x}"),
        (Some(p), t) => match p.kind {
            Kind::Linear { host_page } => {
                let t =
                    t.ok_or_else(|| TestCaseError::fail(format!("window page {page:#x} absent")))?;
                prop_assert_eq!(
                    t.hpa,
                    HostPhysAddr::new(HOST_WINDOW + host_page * PAGE_SIZE_4K)
                );
                prop_assert_eq!(t.attr.access, p.access);
                prop_assert_eq!(t.attr.mem_type, MemType::Uncacheable);
            }
            Kind::Ram => {
                let want = m.page_bytes(page);
                match t {
                    None => prop_assert!(
                        want.iter().all(|&b| b == 0),
                        "absent page {page:#x} should hold data"
                    ),
                    Some(t) => {
                        prop_assert!(p.access.contains(t.attr.access), "leaf grants too much");
                        let mut got = vec![0u8; PAGE_SIZE_4K];
                        read_phys(arena, t.hpa, &mut got).unwrap();
                        prop_assert!(got == want, "contents of page {page:#x} differ");
                    }
                }
            }
        },
    }
    Ok(())
}

fn check_areas(s: &Space, m: &Model) -> Result<(), TestCaseError> {
    let mut seen = 0;
    for a in s.areas() {
        let first = a.range.start().as_usize() / PAGE_SIZE_4K;
        let n = a.range.size() / PAGE_SIZE_4K;
        for page in first..first + n {
            let p = m
                .pages
                .get(&page)
                .ok_or_else(|| TestCaseError::fail(format!("area covers unmapped {page:#x}")))?;
            prop_assert_eq!(p.access, a.access);
            match (p.kind, a.kind) {
                (Kind::Ram, ept::space::AreaKind::Ram { .. }) => {}
                (Kind::Linear { host_page }, ept::space::AreaKind::Linear { hpa }) => {
                    prop_assert_eq!(
                        hpa.as_usize() + (page - first) * PAGE_SIZE_4K,
                        HOST_WINDOW + host_page * PAGE_SIZE_4K
                    );
                }
                (k, ak) => prop_assert!(false, "kind {k:?} vs {ak:?}"),
            }
            seen += 1;
        }
    }
    prop_assert_eq!(seen, m.pages.len());
    Ok(())
}

/// Exact frame accounting when no 2 MiB RAM leaf exists: every RAM frame is one 4 KiB
/// leaf; the arena holds exactly the tables plus the distinct RAM frames.
fn check_frames(
    spaces: &[(Space, Model)],
    arena: &HeapArena,
    exact: bool,
) -> Result<(), TestCaseError> {
    let mut distinct = BTreeSet::new();
    let mut tables = 0;
    for (s, m) in spaces {
        let st = s.stats();
        prop_assert!(st.family_frames <= st.quota_frames, "over quota");
        tables += st.table_frames;
        let mut own = 0;
        for (&page, p) in &m.pages {
            if p.kind == Kind::Ram
                && let Some(t) = s.translate(g(page * PAGE_SIZE_4K))
            {
                distinct.insert(t.hpa.as_usize() & !(PAGE_SIZE_4K - 1));
                own += 1;
            }
        }
        if exact {
            prop_assert_eq!(st.ram_frames, own, "ram_frames vs RAM leaves");
        } else {
            prop_assert!(st.ram_frames >= own);
        }
    }
    if exact {
        prop_assert_eq!(arena.in_use(), tables + distinct.len(), "arena frames");
    } else {
        prop_assert!(arena.in_use() >= tables + distinct.len());
    }
    Ok(())
}

fn is_oom(e: &SpaceError) -> bool {
    matches!(
        e,
        SpaceError::OutOfMemory { .. } | SpaceError::OutOfMetadata { .. }
    )
}

fn category(e: &SpaceError) -> &'static str {
    match e {
        SpaceError::NotMapped { .. } => "unmapped",
        SpaceError::PermissionDenied { .. } => "denied",
        SpaceError::NotRam { .. } => "host window",
        SpaceError::AlreadyMapped { .. } => "overlap",
        SpaceError::InvalidRange { .. } => "range",
        SpaceError::OutOfMemory { .. } => "oom",
        SpaceError::RightsExceeded { .. } => "ceiling",
        _ => "other",
    }
}

fn run(steps: Vec<Step>, huge: bool, quota: usize) -> Result<(), TestCaseError> {
    let arena = HeapArena::new(6 * 512);
    let caps = if huge {
        Stage2Caps::all()
    } else {
        caps_4k_only()
    };
    let mut first: Space = new_space(&arena, PAGES * PAGE_SIZE_4K, caps, Inv, quota);
    let mut model = Model::default();
    // Start with on-demand RAM over the first 4 MiB (RW, then a read-only MiB).
    first.map_alloc(g(0), 0x30_0000, Access::RW, false).unwrap();
    first
        .map_alloc(g(0x30_0000), 0x10_0000, Access::READ, false)
        .unwrap();
    for p in 0..1024 {
        let access = if p < 768 { Access::RW } else { Access::READ };
        model.pages.insert(
            p,
            PageModel {
                kind: Kind::Ram,
                access,
                ceiling: access,
            },
        );
    }
    let mut spaces: Vec<(Space, Model)> = vec![(first, model)];
    for st in steps {
        if spaces.is_empty() {
            break;
        }
        let idx = st.space % spaces.len();
        let in_use = arena.in_use();
        let before: Vec<_> = spaces.iter().map(|(s, _)| snapshot(s)).collect();
        if let Some(n) = st.fail_after {
            arena.fail_after(n);
        }
        let (s, m) = &mut spaces[idx];
        // The pages whose contents to compare after the step.
        let mut touched: Vec<usize> = Vec::new();
        let result: Result<(), SpaceError> = match st.op.clone() {
            Op::MapAlloc {
                page,
                pages,
                access,
                populate,
            } => {
                let access = ACCESSES[access];
                let r = s.map_alloc(
                    g(page * PAGE_SIZE_4K),
                    pages * PAGE_SIZE_4K,
                    access,
                    populate,
                );
                let overlap = (page..page + pages).any(|p| m.pages.contains_key(&p));
                match &r {
                    Ok(()) => {
                        prop_assert!(page + pages <= PAGES && !overlap);
                        for p in page..page + pages {
                            m.pages.insert(
                                p,
                                PageModel {
                                    kind: Kind::Ram,
                                    access,
                                    ceiling: access,
                                },
                            );
                        }
                    }
                    Err(e) if page + pages > PAGES => prop_assert_eq!(category(e), "range"),
                    Err(e) if overlap => prop_assert_eq!(category(e), "overlap"),
                    Err(e) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(page..(page + pages).min(PAGES));
                r
            }
            Op::MapLinear {
                page,
                pages,
                access,
                host_page,
            } => {
                let access = ACCESSES[access];
                let r = s.map_linear(
                    g(page * PAGE_SIZE_4K),
                    HostPhysAddr::new(HOST_WINDOW + host_page * PAGE_SIZE_4K),
                    pages * PAGE_SIZE_4K,
                    access,
                    MemType::Uncacheable,
                );
                let overlap = (page..page + pages).any(|p| m.pages.contains_key(&p));
                match &r {
                    Ok(()) => {
                        prop_assert!(page + pages <= PAGES && !overlap);
                        for (i, p) in (page..page + pages).enumerate() {
                            let kind = Kind::Linear {
                                host_page: host_page + i,
                            };
                            m.pages.insert(
                                p,
                                PageModel {
                                    kind,
                                    access,
                                    ceiling: access,
                                },
                            );
                        }
                    }
                    Err(e) if page + pages > PAGES => prop_assert_eq!(category(e), "range"),
                    Err(e) if overlap => prop_assert_eq!(category(e), "overlap"),
                    Err(e) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(page..(page + pages).min(PAGES));
                r
            }
            Op::Unmap { page, pages } => {
                let r = s.unmap(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K);
                match &r {
                    Ok(()) => {
                        for p in page..page + pages {
                            m.pages.remove(&p);
                        }
                        m.forget_bytes(page, pages);
                    }
                    Err(e) if page + pages > PAGES => prop_assert_eq!(category(e), "range"),
                    Err(e) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(page.saturating_sub(1)..(page + pages + 1).min(PAGES));
                r
            }
            Op::Protect {
                page,
                pages,
                access,
            } => {
                let access = ACCESSES[access];
                let r = s.protect(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K, access);
                let above = (page..page + pages)
                    .filter_map(|p| m.pages.get(&p))
                    .any(|pm| !pm.ceiling.contains(access));
                match &r {
                    Ok(()) => {
                        for p in page..page + pages {
                            if let Some(pm) = m.pages.get_mut(&p) {
                                pm.access = access;
                            }
                        }
                    }
                    Err(e) if page + pages > PAGES => prop_assert_eq!(category(e), "range"),
                    Err(e) if above => prop_assert_eq!(category(e), "ceiling"),
                    Err(e) => prop_assert!(is_oom(e), "{e}"),
                }
                prop_assert!(r.is_err() || !above, "protect above the ceiling succeeded");
                touched.extend(page.saturating_sub(1)..(page + pages + 1).min(PAGES));
                r
            }
            Op::Populate { page, pages } => {
                let r = s.populate_area(g(page * PAGE_SIZE_4K), pages * PAGE_SIZE_4K);
                let missing = (page..page + pages).any(|p| !m.pages.contains_key(&p));
                let window = (page..page + pages).any(|p| {
                    matches!(
                        m.pages.get(&p),
                        Some(PageModel {
                            kind: Kind::Linear { .. },
                            ..
                        })
                    )
                });
                match &r {
                    Ok(()) => {
                        prop_assert!(!missing && !window);
                        for p in page..page + pages {
                            prop_assert!(
                                s.translate(g(p * PAGE_SIZE_4K)).is_some(),
                                "not populated"
                            );
                        }
                    }
                    Err(e) if page + pages > PAGES => prop_assert_eq!(category(e), "range"),
                    Err(e) if missing || window => {
                        prop_assert!(matches!(category(e), "unmapped" | "host window"), "{e}")
                    }
                    Err(e) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(page..(page + pages).min(PAGES));
                r
            }
            Op::Fault { gpa, access } => {
                let access = [Access::READ, Access::WRITE, Access::EXECUTE][access];
                let page = gpa / PAGE_SIZE_4K;
                let present = s.translate(g(gpa)).is_some();
                let r = s
                    .handle_fault(Stage2Fault {
                        gpa: g(gpa),
                        access,
                        kind: if present {
                            FaultKind::Permission
                        } else {
                            FaultKind::NotPresent
                        },
                        in_guest_walk: false,
                    })
                    .map(|_| ());
                match (&r, m.pages.get(&page)) {
                    (Ok(()), Some(p)) => {
                        prop_assert!(p.access.contains(access));
                        let t = s.translate(g(gpa)).expect("mapped after fault");
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
            Op::Write { gpa, len, seed } => {
                let len = len.min(PAGES * PAGE_SIZE_4K - gpa);
                let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect();
                let r = s.write(g(gpa), &data);
                let problem = m.access_problem(gpa, len, Access::WRITE);
                match (&r, problem) {
                    (Ok(()), None) => {
                        for (i, &b) in data.iter().enumerate() {
                            m.bytes.insert(gpa + i, b);
                        }
                    }
                    (Ok(()), Some(p)) => prop_assert!(false, "write allowed despite {p}"),
                    (Err(e), Some(_)) => {
                        prop_assert!(
                            matches!(category(e), "unmapped" | "denied" | "host window"),
                            "{e}"
                        )
                    }
                    (Err(e), None) => prop_assert!(is_oom(e), "{e}"),
                }
                touched.extend(gpa / PAGE_SIZE_4K..=(gpa + len - 1) / PAGE_SIZE_4K);
                r
            }
            Op::Read { gpa, len } => {
                let len = len.min(PAGES * PAGE_SIZE_4K - gpa);
                let mut buf = vec![0xeeu8; len];
                let r = s.read(g(gpa), &mut buf);
                let problem = m.access_problem(gpa, len, Access::READ);
                match (&r, problem) {
                    (Ok(()), None) => {
                        let want: Vec<u8> = (gpa..gpa + len)
                            .map(|a| m.bytes.get(&a).copied().unwrap_or(0))
                            .collect();
                        prop_assert!(buf == want, "read back differs");
                    }
                    (Ok(()), Some(p)) => prop_assert!(false, "read allowed despite {p}"),
                    (Err(e), Some(_)) => {
                        prop_assert!(
                            matches!(category(e), "unmapped" | "denied" | "host window"),
                            "{e}"
                        )
                    }
                    (Err(e), None) => prop_assert!(false, "read failed: {e}"),
                }
                r
            }
            Op::Clone => {
                if spaces.len() >= 3 {
                    Ok(())
                } else {
                    let (s, m) = &spaces[idx];
                    match s.try_clone() {
                        Ok(c) => {
                            let m = m.clone();
                            spaces.push((c, m));
                            Ok(())
                        }
                        Err(e) => {
                            prop_assert!(is_oom(&e), "{e}");
                            Err(e)
                        }
                    }
                }
            }
            Op::Drop => {
                spaces.remove(idx);
                arena.clear_failures();
                check_frames(&spaces, &arena, !huge)?;
                continue;
            }
            Op::Clear => {
                let r = s.clear();
                prop_assert!(r.is_ok());
                m.pages.clear();
                m.bytes.clear();
                r
            }
        };
        arena.clear_failures();
        if let Err(e) = &result {
            if is_oom(e) {
                prop_assert!(
                    st.fail_after.is_some()
                        || matches!(
                            e,
                            SpaceError::OutOfMemory {
                                reason: OomReason::Quota { .. },
                                ..
                            } | SpaceError::OutOfMetadata { .. }
                        )
                        || arena.free_frames() < 1024,
                    "spurious out of memory: {e}"
                );
            }
            // Nothing changed, anywhere.
            prop_assert_eq!(arena.in_use(), in_use, "failed op changed the arena: {}", e);
            let after: Vec<_> = spaces.iter().map(|(s, _)| snapshot(s)).collect();
            prop_assert_eq!(after, before, "failed op changed a space: {}", e);
        }
        for (s, m) in &spaces {
            s.validate().map_err(TestCaseError::fail)?;
            check_areas(s, m)?;
        }
        // The touched pages in every space: a write must not leak into a clone.
        for (s, m) in &spaces {
            for &p in &touched {
                check_page(s, &arena, m, p)?;
            }
        }
        check_frames(&spaces, &arena, !huge)?;
    }
    for (s, m) in &spaces {
        for p in 0..PAGES {
            check_page(s, &arena, m, p)?;
        }
    }
    drop(spaces);
    prop_assert_eq!(arena.in_use(), 0, "frames leaked at teardown");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::proptest_cases(48), ..ProptestConfig::default() })]

    #[test]
    fn model_4k_exact_accounting(
        steps in proptest::collection::vec(step(), 1..50),
        quota in prop_oneof![Just(64usize), Just(400usize), Just(3000usize)],
    ) {
        run(steps, false, quota)?;
    }

    #[test]
    fn model_with_huge_leaves(
        steps in proptest::collection::vec(step(), 1..50),
        quota in prop_oneof![Just(600usize), Just(3000usize)],
    ) {
        run(steps, true, quota)?;
    }
}
