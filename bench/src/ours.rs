//! This project's side of every workload (wired in as the crates land on main).

use memory_set::{AddrRange, GuestPhysAddr, MappingBackend, MemoryArea, MemorySet};

use crate::harness::{Recorder, Who};
use crate::w3::{
    AREA, AREAS, Answers, BASE, CUT, FREE_LARGE, FREE_SMALL, Inputs, LIMIT, PROT, SLOT,
};

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

/// W3 over our `memory_set`.
pub fn w3(rec: &mut Recorder, inp: &Inputs) -> Option<Answers> {
    let gpa = GuestPhysAddr::new;
    let mut set = MemorySet::<NopBackend>::new();
    const RW: u8 = 3;
    const RO: u8 = 1;
    rec.time("W3/insert", Who::Ours, AREAS, || {
        for &i in &inp.insert {
            let area = MemoryArea::new(gpa(BASE + i * SLOT), AREA, RW, NopBackend).expect("area");
            set.map(area, &mut (), false).expect("insert");
        }
    });
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
    Some(Answers { hits, small, large })
}

/// W4 over our address space.
pub fn w4(_rec: &mut Recorder, _mode: crate::w4::Mode, _order: &[usize]) {}

/// W5 over our stage-2 table.
pub fn w5(_rec: &mut Recorder) {}
