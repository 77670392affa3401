//! The MSR permission map (AMD APM vol. 2, 15.11 "MSR Intercepts"): two bits per MSR
//! (read intercept, then write intercept) in three 2 KiB ranges, for MSRs
//! `0000_0000h-0000_1FFFh`, `C000_0000h-C000_1FFFh` and `C001_0000h-C001_1FFFh`.
//!
//! Every MSR is intercepted except the ones whose guest copy the hardware keeps in the
//! VMCB and switches on every VMRUN/#VMEXIT or VMLOAD/VMSAVE ([`PASS_THROUGH`]), so
//! a guest's writes to them reach only its own state.

/// MSRs the guest reads and writes directly: EFER (VMCB save area, APM 15.5.1; the
/// guest keeping EFER.SVME set is checked by VMRUN, which otherwise refuses the
/// guest), PAT (G_PAT with nested paging, 15.25.8), and the state VMLOAD/VMSAVE
/// switch (15.5.2): STAR, LSTAR, CSTAR, SFMASK, FS.base, GS.base, KernelGSBase,
/// SYSENTER_CS/ESP/EIP.
pub const PASS_THROUGH: [u32; 12] = [
    0xC000_0080, // EFER
    0x0000_0277, // PAT
    0xC000_0081, // STAR
    0xC000_0082, // LSTAR
    0xC000_0083, // CSTAR
    0xC000_0084, // SFMASK
    0xC000_0100, // FS.base
    0xC000_0101, // GS.base
    0xC000_0102, // KernelGSBase
    0x0000_0174, // SYSENTER_CS
    0x0000_0175, // SYSENTER_ESP
    0x0000_0176, // SYSENTER_EIP
];

/// Byte offset and bit of `msr`'s read-intercept bit, if the map covers it.
fn position(msr: u32) -> Option<(usize, u8)> {
    let (base, index) = match msr {
        0..=0x1FFF => (0, msr),
        0xC000_0000..=0xC000_1FFF => (0x800, msr - 0xC000_0000),
        0xC001_0000..=0xC001_1FFF => (0x1000, msr - 0xC001_0000),
        _ => return None,
    };
    let bit = index as usize * 2;
    Some((base + bit / 8, (bit % 8) as u8))
}

/// Clears the read and write intercepts of `msr` in `map`.
pub fn pass_through(map: &mut [u8], msr: u32) {
    if let Some((byte, bit)) = position(msr) {
        map[byte] &= !(0b11 << bit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_apm_layout() {
        assert_eq!(position(0), Some((0, 0)));
        assert_eq!(position(0x277), Some((0x9D, 6)));
        assert_eq!(position(0xC000_0080), Some((0x820, 0)));
        assert_eq!(position(0xC001_0117), Some((0x1045, 6)));
        assert_eq!(position(0x4000_0000), None);
        let mut map = [0xFFu8; 0x1800];
        pass_through(&mut map, 0xC000_0081);
        assert_eq!(map[0x820], 0b1111_0011);
    }
}
