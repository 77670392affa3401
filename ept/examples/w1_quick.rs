//! Quick self-check of the W1 workload (1 GiB of 4K leaves: map, translate, unmap)
//! against its memory floor; the full comparison with the anchors lives in `bench`.
//! Run with `cargo run --release -p ept --example w1_quick`.

use std::hint::black_box;
use std::time::Instant;

use ept::flush::Flush;
use ept::frame::{FrameAlloc, HeapArena, PhysMapper};
use ept::{Access, Ept, LeafAttr, LeafSize, Stage2Caps, Stage2Table};
use memory_set::{GuestPhysAddr, HostPhysAddr};

const PAGES: usize = 262_144;
const G1: usize = 0x4000_0000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

type Table = Stage2Table<Ept, HeapArena>;

/// An empty table over `arena`.
fn new_table(arena: &mut HeapArena) -> Table {
    Stage2Table::new(arena.clone(), arena, Stage2Caps::all()).unwrap()
}

/// Maps the 1 GiB window at `G1` to host `0x80_0000_0000` with leaves of `size`.
fn map_window(t: &mut Table, arena: &mut HeapArena, attr: LeafAttr, size: LeafSize) -> Flush {
    t.map_range(
        arena,
        GuestPhysAddr::new(G1),
        HostPhysAddr::new(0x80_0000_0000),
        G1,
        attr,
        size,
    )
    .unwrap()
}

fn main() {
    let rounds = 9;
    let (mut map, mut tr, mut unmap, mut floor, mut map2m) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let mut arena = HeapArena::new(2048);
        let mut t = new_table(&mut arena);
        let attr = LeafAttr::ram(Access::RWX);
        let s = Instant::now();
        let f = map_window(&mut t, &mut arena, attr, LeafSize::Size4K);
        map.push(s.elapsed().as_nanos() as f64 / PAGES as f64);
        assert!(f.is_empty());
        let s = Instant::now();
        let mut acc = 0;
        for p in 0..PAGES {
            acc ^= t
                .translate(GuestPhysAddr::new(G1 + p * 4096))
                .unwrap()
                .hpa
                .as_usize();
        }
        black_box(acc);
        tr.push(s.elapsed().as_nanos() as f64 / PAGES as f64);
        let s = Instant::now();
        let f = t
            .unmap_range(&mut arena, GuestPhysAddr::new(G1), G1)
            .unwrap();
        let left = f.complete(|_| {}, &mut arena);
        unmap.push(s.elapsed().as_nanos() as f64 / PAGES as f64);
        assert_eq!(left.len(), PAGES);
        // 2M leaves.
        let s = Instant::now();
        let f = map_window(&mut t, &mut arena, attr, LeafSize::Size2M);
        map2m.push(s.elapsed().as_nanos() as f64 / 512.0);
        assert!(f.is_empty());
        let _ = t.destroy().complete(|_| {}, &mut arena);
        // Floor: zero 513 frames and write 262144 entries.
        let s = Instant::now();
        let frames: Vec<_> = (0..513).map(|_| arena.alloc_frame().unwrap()).collect();
        for &f in &frames {
            let p = arena.phys_to_virt(f) as *mut u64;
            // SAFETY: arena frames are mapped 4 KiB blocks.
            unsafe { core::ptr::write_bytes(p, 0, 512) };
        }
        for (k, &f) in frames[1..].iter().enumerate() {
            let p = arena.phys_to_virt(f) as *mut u64;
            for i in 0..512 {
                let v = ((k * 512 + i) << 12) as u64 | 7;
                // SAFETY: as above; `i < 512` stays inside the frame.
                let e = unsafe { p.add(i) };
                // SAFETY: `e` points into a mapped arena frame.
                unsafe { e.write_volatile(v) };
            }
        }
        floor.push(s.elapsed().as_nanos() as f64 / PAGES as f64);
        for f in frames {
            arena.dealloc_frame(f);
        }
    }
    // W5: protect one 4K page inside each of 512 2M leaves (each splits its leaf).
    let mut w5 = vec![];
    for _ in 0..rounds {
        let mut arena = HeapArena::new(2048);
        let mut t = new_table(&mut arena);
        let f = map_window(
            &mut t,
            &mut arena,
            LeafAttr::ram(Access::RWX),
            LeafSize::Size2M,
        );
        assert!(f.is_empty());
        let ro = LeafAttr::ram(Access::READ);
        let s = Instant::now();
        for k in 0..512 {
            let f = t
                .protect_range(
                    &mut arena,
                    GuestPhysAddr::new(G1 + k * 0x20_0000 + 0x5000),
                    0x1000,
                    ro,
                )
                .unwrap();
            let _ = f.complete(|_| {}, &mut arena);
        }
        w5.push(s.elapsed().as_nanos() as f64 / 512.0);
        assert_eq!(t.leaf_count(LeafSize::Size4K), 512 * 512);
        let _ = t.destroy().complete(|_| {}, &mut arena);
    }
    println!("W5 split-protect {:.0} ns/leaf", median(w5));
    let (m, t, u, fl, m2) = (
        median(map),
        median(tr),
        median(unmap),
        median(floor),
        median(map2m),
    );
    println!(
        "W1 4K map {m:.2} ns/page (floor {fl:.2}, ratio {:.2}), translate {t:.2} ns/page, unmap {u:.2} ns/page",
        m / fl
    );
    println!("W2 2M map {m2:.1} ns/leaf");
}
