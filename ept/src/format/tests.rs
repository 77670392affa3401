//! Bit-level tests of both formats.

use memory_set::HostPhysAddr;

use super::*;
use crate::caps::Stage2Caps;

fn all_caps() -> Stage2Caps {
    Stage2Caps::all()
}

#[test]
fn ept_leaf_bits_every_access_and_type() {
    let c = all_caps();
    // Access bits are EPT bits 0..2.
    for (a, bits) in [
        (Access::READ, 0b001),
        (Access::RW, 0b011),
        (Access::RX, 0b101),
        (Access::RWX, 0b111),
        (Access::EXECUTE, 0b100),
    ] {
        let e = Ept::leaf_bits(LeafAttr::ram(a), 1, &c).unwrap();
        assert_eq!(e & 0b111, bits, "{a:?}");
        assert_eq!(Ept::leaf_attr(e, 1).access, a);
    }
    // Memory types in bits 5:3.
    for (mt, code) in [
        (MemType::Uncacheable, 0),
        (MemType::WriteCombining, 1),
        (MemType::WriteThrough, 4),
        (MemType::WriteProtected, 5),
        (MemType::WriteBack, 6),
    ] {
        let attr = LeafAttr {
            access: Access::READ,
            mem_type: mt,
        };
        let e = Ept::leaf_bits(attr, 1, &c).unwrap();
        assert_eq!((e >> 3) & 7, code);
        assert_eq!(Ept::leaf_attr(e, 1), attr);
        assert_eq!(Ept::mem_type_from_code(code as u8), Some(mt));
    }
    for bad in [2u8, 3, 7] {
        assert_eq!(Ept::mem_type_from_code(bad), None);
    }
    // The leaf bit (7) only at levels 2 and 3; never IPAT, A, D, user-execute.
    let a = LeafAttr::ram(Access::RWX);
    assert_eq!(Ept::leaf_bits(a, 1, &c).unwrap() & Ept::LEAF, 0);
    assert_ne!(Ept::leaf_bits(a, 2, &c).unwrap() & Ept::LEAF, 0);
    assert_ne!(Ept::leaf_bits(a, 3, &c).unwrap() & Ept::LEAF, 0);
    for l in 1..=3 {
        let e = Ept::leaf_bits(a, l, &c).unwrap();
        assert_eq!(
            e & (Ept::IGNORE_PAT | Ept::ACCESSED | Ept::DIRTY | Ept::USER_EXECUTE),
            0
        );
        assert_eq!(e & ADDR_MASK, 0);
    }
}

#[test]
fn ept_refuses_unencodable_attrs() {
    let mut c = all_caps();
    let r = |a, c: &Stage2Caps| Ept::leaf_bits(LeafAttr::ram(a), 1, c);
    assert_eq!(r(Access::empty(), &c), Err(AttrError::NoAccess));
    assert_eq!(r(Access::WRITE, &c), Err(AttrError::WriteWithoutRead));
    assert_eq!(
        r(Access::WRITE | Access::EXECUTE, &c),
        Err(AttrError::WriteWithoutRead)
    );
    assert!(r(Access::EXECUTE, &c).is_ok());
    c.execute_only = false;
    assert_eq!(
        r(Access::EXECUTE, &c),
        Err(AttrError::ExecuteOnlyUnsupported)
    );
}

#[test]
fn ept_decode_and_table_entries() {
    let t = Ept::table_entry(HostPhysAddr::new(0x1234_5000));
    assert_eq!(t, 0x1234_5007);
    assert_eq!(
        Ept::decode(t, 4),
        EntryKind::Table(HostPhysAddr::new(0x1234_5000))
    );
    assert_eq!(
        Ept::decode(t, 2),
        EntryKind::Table(HostPhysAddr::new(0x1234_5000))
    );
    assert_eq!(
        Ept::decode(t, 1),
        EntryKind::Leaf(HostPhysAddr::new(0x1234_5000))
    );
    assert_eq!(Ept::decode(0, 3), EntryKind::Absent);
    // Only bits 2:0 make an entry present.
    assert_eq!(Ept::decode(0xfff8 | (1 << 63), 1), EntryKind::Absent);
    let leaf2m = 0x4020_0000 | Ept::LEAF | 0b111 | (6 << 3);
    assert_eq!(
        Ept::decode(leaf2m, 2),
        EntryKind::Leaf(HostPhysAddr::new(0x4020_0000))
    );
    // Bit 7 in a PML4E is not a leaf (it is reserved).
    assert!(matches!(Ept::decode(leaf2m, 4), EntryKind::Table(_)));
}

#[test]
fn ept_misconfigurations() {
    let c = all_caps();
    let ok = |e, l| Ept::check_entry(e, l, &c);
    let wb = 6 << 3;
    assert_eq!(ok(0x1000 | 0b111 | wb, 1), Ok(()));
    assert_eq!(
        ok(0x1000 | 0b010 | wb, 1),
        Err(EntryProblem::WriteWithoutRead)
    );
    assert_eq!(ok(0x1000 | 0b110, 3), Err(EntryProblem::WriteWithoutRead));
    let mut no_xo = c;
    no_xo.execute_only = false;
    assert_eq!(
        Ept::check_entry(0x1000 | 0b100 | wb, 1, &no_xo),
        Err(EntryProblem::ExecuteOnlyUnsupported)
    );
    for bad in [2u64, 3, 7] {
        assert_eq!(
            ok(0x1000 | 0b001 | (bad << 3), 1),
            Err(EntryProblem::BadMemType(bad as u8))
        );
    }
    // Non-leaf entries ignore memory type rules but have bits 6:3 reserved.
    assert_eq!(
        ok(0x1000 | 0b111 | (1 << 3), 2),
        Err(EntryProblem::ReservedBits(1 << 3))
    );
    // PML4E: bits 7:3 reserved, so no leaf at the top.
    assert_eq!(
        ok(0x1000 | 0b111 | (1 << 7), 4),
        Err(EntryProblem::ReservedBits(1 << 7))
    );
    // 2M leaf: bits 20:12 reserved; 1G leaf: bits 29:12.
    assert_eq!(
        ok(0x20_0000 | 0x1000 | Ept::LEAF | 1 | wb, 2),
        Err(EntryProblem::ReservedBits(0x1000))
    );
    assert_eq!(
        ok(0x4000_0000 | 0x20_0000 | Ept::LEAF | 1 | wb, 3),
        Err(EntryProblem::ReservedBits(0x20_0000))
    );
    assert_eq!(ok(0x4000_0000 | Ept::LEAF | 1 | wb, 3), Ok(()));
    // Leaves that the capabilities lack.
    let snb = Stage2Caps {
        leaf_1g: false,
        ..c
    };
    assert_eq!(
        Ept::check_entry(0x4000_0000 | Ept::LEAF | 1 | wb, 3, &snb),
        Err(EntryProblem::LeafNotAllowed)
    );
    let no2m = Stage2Caps {
        leaf_2m: false,
        ..c
    };
    assert_eq!(
        Ept::check_entry(0x20_0000 | Ept::LEAF | 1 | wb, 2, &no2m),
        Err(EntryProblem::LeafNotAllowed)
    );
    // Address bits above MAXPHYADDR.
    let narrow = c.with_host_phys_bits(39);
    assert_eq!(
        Ept::check_entry((1 << 40) | 1 | wb, 1, &narrow),
        Err(EntryProblem::ReservedBits(1 << 40))
    );
    assert_eq!(Ept::check_entry((1 << 38) | 1 | wb, 1, &narrow), Ok(()));
}

#[test]
fn eptp_fields() {
    let root = HostPhysAddr::new(0xabc_d000);
    let c = all_caps();
    let p = Ept::eptp(root, &c);
    assert_eq!(p & 7, 6, "WB");
    assert_eq!((p >> 3) & 7, 3, "4-level walk");
    assert_ne!(p & (1 << 6), 0, "A/D enabled");
    assert_eq!(p & ADDR_MASK, 0xabc_d000);
    let snb = Stage2Caps {
        accessed_dirty: false,
        mem_wb: false,
        ..c
    };
    let p = Ept::eptp(root, &snb);
    assert_eq!(p & 7, 0, "UC without WB support");
    assert_eq!(p & (1 << 6), 0, "no A/D without the capability");
    assert_eq!(Ept::root_pointer(root, &c), Ept::eptp(root, &c));
}

#[test]
fn npt_leaf_bits_every_access_and_type() {
    let c = Stage2Caps::npt(true);
    for (a, rw, nx) in [
        (Access::READ, false, true),
        (Access::RW, true, true),
        (Access::RX, false, false),
        (Access::RWX, true, false),
    ] {
        for level in 1..=3 {
            let e = Npt::leaf_bits(LeafAttr::ram(a), level, &c).unwrap();
            assert_ne!(e & Npt::PRESENT, 0);
            assert_ne!(e & Npt::USER, 0, "U must be set");
            assert_eq!(e & Npt::WRITABLE != 0, rw);
            assert_eq!(e & Npt::NO_EXECUTE != 0, nx);
            assert_eq!(e & Npt::HUGE != 0 && level > 1, level > 1);
            assert_eq!(e & (Npt::ACCESSED | Npt::DIRTY), 0);
            assert_eq!(Npt::leaf_attr(e, level).access, a);
        }
    }
    // Memory types through the documented host PAT.
    for mt in MemType::ALL {
        for level in 1..=3u8 {
            let attr = LeafAttr {
                access: Access::READ,
                mem_type: mt,
            };
            let e = Npt::leaf_bits(attr, level, &c).unwrap();
            assert_eq!(Npt::leaf_attr(e, level), attr, "{mt:?} level {level}");
            let pat = if level == 1 {
                Npt::PAT_4K
            } else {
                Npt::PAT_HUGE
            };
            let idx = (e & Npt::PWT != 0) as u64
                | ((e & Npt::PCD != 0) as u64) << 1
                | ((e & pat != 0) as u64) << 2;
            let pat_type = (NPT_HOST_PAT >> (idx * 8)) & 0xff;
            let expect = match mt {
                MemType::Uncacheable => 0,
                MemType::WriteCombining => 1,
                MemType::WriteThrough => 4,
                MemType::WriteProtected => 5,
                MemType::WriteBack => 6,
            };
            assert_eq!(pat_type, expect, "{mt:?}");
        }
    }
    // The default PAT and ours agree on entries 0-3.
    assert_eq!(NPT_HOST_PAT & 0xffff_ffff, 0x0007_0406);
}

#[test]
fn npt_refuses_unreadable() {
    let c = Stage2Caps::npt(true);
    let r = |a| Npt::leaf_bits(LeafAttr::ram(a), 1, &c);
    assert_eq!(r(Access::empty()), Err(AttrError::NoAccess));
    assert_eq!(r(Access::WRITE), Err(AttrError::WriteWithoutRead));
    assert_eq!(r(Access::EXECUTE), Err(AttrError::ExecuteOnlyUnsupported));
}

#[test]
fn npt_decode_and_checks() {
    let c = Stage2Caps::npt(false);
    let t = Npt::table_entry(HostPhysAddr::new(0x5000));
    assert_eq!(t, 0x5007);
    assert_eq!(
        Npt::decode(t, 3),
        EntryKind::Table(HostPhysAddr::new(0x5000))
    );
    assert_eq!(Npt::decode(0x5006, 1), EntryKind::Absent);
    // 2M leaf with the PAT bit (12): address excludes it.
    let e = 0x20_0000 | Npt::PAT_HUGE | Npt::HUGE | 0x7;
    assert_eq!(
        Npt::decode(e, 2),
        EntryKind::Leaf(HostPhysAddr::new(0x20_0000))
    );
    assert_eq!(Npt::check_entry(e, 2, &c), Ok(()));
    assert_eq!(
        Npt::check_entry(e | 0x2000, 2, &c),
        Err(EntryProblem::ReservedBits(0x2000))
    );
    assert_eq!(
        Npt::check_entry(0x5003, 1, &c),
        Err(EntryProblem::MissingUser)
    );
    assert_eq!(
        Npt::check_entry(0x5007 | Npt::HUGE, 4, &c),
        Err(EntryProblem::ReservedBits(Npt::HUGE))
    );
    // 1G leaves need Page1GB.
    let g = 0x4000_0000 | Npt::HUGE | 0x7;
    assert_eq!(
        Npt::check_entry(g, 3, &c),
        Err(EntryProblem::LeafNotAllowed)
    );
    assert_eq!(Npt::check_entry(g, 3, &Stage2Caps::npt(true)), Ok(()));
    assert_eq!(
        Npt::check_entry(g | 0x10_0000, 3, &Stage2Caps::npt(true)),
        Err(EntryProblem::ReservedBits(0x10_0000))
    );
    assert_eq!(Npt::ncr3(HostPhysAddr::new(0x7000)), 0x7000);
    assert_eq!(Npt::root_pointer(HostPhysAddr::new(0x7000), &c), 0x7000);
}

#[test]
fn attr_display() {
    assert_eq!(LeafAttr::ram(Access::RX).to_string(), "r-x WriteBack");
    assert_eq!(LeafAttr::device(Access::RW).to_string(), "rw- Uncacheable");
}
