//! CPUID as every guest sees it: a defined virtual CPU built from the host's leaves by
//! allow-lists (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E).
//!
//! * Only features the hypervisor supports are shown: no VMX, SVM or SMX (nested
//!   virtualization is refused), no XSAVE/AVX (the world switch saves x87/SSE only and
//!   XSETBV ends the guest), no PCID/INVPCID, no local APIC or x2APIC (there is none),
//!   no MONITOR/MWAIT, no RDTSCP/RDPID, no performance monitoring, debug store or
//!   machine-check MSRs, no speculation-control MSRs; PKU only when the world switch
//!   saves PKRU ([`Policy::pkru`]).
//! * No host topology: one logical processor, initial APIC ID 0, no HTT, no leaf 0xB or
//!   0x1F, no core counts in leaves 4 and 0x8000_0008, no CMP_LEGACY/TOPOEXT.
//! * The hypervisor bit (leaf 1 ECX bit 31) and its own leaves 0x4000_0000 (highest
//!   hypervisor leaf, signature [`SIGNATURE`]) and 0x4000_0001 ([`HV_FEATURES`]).
//! * Leaf 0x8000_000A (the host's SVM features) and every leaf not named here read 0.
//!
//! Vendor, family/model/stepping, brand string, cache and TLB descriptors and address
//! sizes pass through: they describe the CPU the guest really runs on.

/// Highest basic leaf offered.
pub const MAX_BASIC: u32 = 7;
/// Highest extended leaf offered.
pub const MAX_EXTENDED: u32 = 0x8000_0008;
/// The hypervisor leaves' base (leaf 0x4000_0000).
pub const HV_BASE: u32 = 0x4000_0000;
/// Highest hypervisor leaf (EAX of leaf 0x4000_0000).
pub const HV_MAX: u32 = 0x4000_0001;
/// The 12-byte hypervisor signature in EBX, ECX, EDX of leaf 0x4000_0000.
pub const SIGNATURE: &[u8; 12] = b"stage2hv\0\0\0\0";
/// Leaf 0x4000_0001 EAX: bit 0 = hypercalls with VMCALL/VMMCALL (`hv_abi`).
pub const HV_FEATURES: u32 = 1;

/// Leaf 1 ECX bit 31: a hypervisor is present (reserved for this use; SDM vol. 2A
/// table 3-10, AMD APM vol. 3 E.3.2).
pub const ECX1_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 5: VMX.
pub const ECX1_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX bit 2: SVM.
pub const ECX81_SVM: u32 = 1 << 2;
/// Leaf 7 ECX bit 3: PKU; bit 4: OSPKE (CR4.PKE as the guest set it).
pub const ECX7_PKU: u32 = 1 << 3;
const ECX7_OSPKE: u32 = 1 << 4;
/// Leaf 1 ECX bit 26: XSAVE; bit 27: OSXSAVE; bit 28: AVX.
pub const ECX1_XSAVE: u32 = 1 << 26;

/// Leaf 1 ECX allowed: SSE3 (0), PCLMULQDQ (1), SSSE3 (9), CX16 (13), SSE4.1 (19),
/// SSE4.2 (20), MOVBE (22), POPCNT (23), AES (25), RDRAND (30) (SDM vol. 2A table 3-10).
const ECX1_ALLOWED: u32 = bits(&[0, 1, 9, 13, 19, 20, 22, 23, 25, 30]);
/// Leaf 1 EDX allowed: FPU 0, VME 1, DE 2, PSE 3, TSC 4, MSR 5, PAE 6, CX8 8, SEP 11,
/// MTRR 12, PGE 13, CMOV 15, PAT 16, PSE-36 17, CLFSH 19, MMX 23, FXSR 24, SSE 25,
/// SSE2 26 (SDM vol. 2A table 3-11). Not: MCE/MCA (no machine-check MSRs), APIC, PSN,
/// DS, ACPI, SS, HTT, TM, PBE.
const EDX1_ALLOWED: u32 = bits(&[
    0, 1, 2, 3, 4, 5, 6, 8, 11, 12, 13, 15, 16, 17, 19, 23, 24, 25, 26,
]);
/// Leaf 7.0 EBX allowed: FSGSBASE 0, BMI1 3, SMEP 7, BMI2 8, ERMS 9, RDSEED 18, ADX 19,
/// SMAP 20, CLFLUSHOPT 23, CLWB 24, SHA 29 (SDM vol. 2A table 3-8). Not: TSC_ADJUST,
/// AVX2/AVX-512, HLE/RTM, INVPCID, MPX, PQM/PQE, Processor Trace.
const EBX7_ALLOWED: u32 = bits(&[0, 3, 7, 8, 9, 18, 19, 20, 23, 24, 29]);
/// Leaf 7.0 ECX allowed (PKU added by [`Policy::pkru`]): UMIP 2. Not: LA57, RDPID, ...
const ECX7_ALLOWED: u32 = bits(&[2]);
/// Leaf 0x8000_0001 ECX allowed: LAHF/SAHF 0, ABM/LZCNT 5, SSE4A 6, misaligned SSE 7,
/// PREFETCHW 8 (APM vol. 3 E.4.2). Not: CMP_LEGACY, SVM, extended APIC space, AltMovCr8,
/// OSVW, IBS, XOP, SKINIT, WDT, LWP, FMA4, TCE, NodeId, TBM, TOPOEXT, perf counters.
const ECX81_ALLOWED: u32 = bits(&[0, 5, 6, 7, 8]);
/// Leaf 0x8000_0001 EDX allowed: the leaf-1 bits AMD mirrors here (as allowed there),
/// SYSCALL 11, NX 20, MMXEXT 22, Page1GB 26, LM 29. Not: FFXSR, RDTSCP, 3DNow!.
const EDX81_ALLOWED: u32 = (EDX1_ALLOWED
    & bits(&[0, 1, 2, 3, 4, 5, 6, 8, 12, 13, 15, 16, 17, 23, 24]))
    | bits(&[11, 20, 22, 26, 29]);

/// A mask with the given bit numbers set.
const fn bits(list: &[u32]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < list.len() {
        m |= 1 << list[i];
        i += 1;
    }
    m
}

/// What the virtual CPU offers beyond the fixed allow-lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// The world switch saves and restores PKRU, so PKU may be shown.
    pub pkru: bool,
    /// The guest's CR4, for the OS-enabled bits (OSPKE).
    pub guest_cr4: u64,
}

/// CR4.PKE (SDM vol. 3A 2.5).
const CR4_PKE: u64 = 1 << 22;

/// The CPUID result `[eax, ebx, ecx, edx]` the guest sees for `leaf`/`subleaf`, built
/// from `host(leaf, subleaf)`.
pub fn leaf(
    leaf: u32,
    subleaf: u32,
    policy: Policy,
    host: impl Fn(u32, u32) -> [u32; 4],
) -> [u32; 4] {
    let zero = [0; 4];
    let max_basic = host(0, 0)[0].min(MAX_BASIC);
    let max_ext = host(0x8000_0000, 0)[0].min(MAX_EXTENDED);
    match leaf {
        0 => {
            let [_, b, c, d] = host(0, 0);
            [max_basic, b, c, d]
        }
        1 if max_basic >= 1 => {
            let [a, b, c, d] = host(1, 0);
            // EBX: brand index (7:0) and CLFLUSH line size (15:8) stay; one logical
            // processor (23:16 = 1... shown as 0 with HTT clear) and APIC ID 0 (31:24).
            let b = b & 0xFFFF;
            [a, b, (c & ECX1_ALLOWED) | ECX1_HYPERVISOR, d & EDX1_ALLOWED]
        }
        // Cache and TLB descriptors.
        2 if max_basic >= 2 => host(2, 0),
        // Deterministic cache parameters without the core/thread sharing counts (EAX
        // 31:14, SDM vol. 2A table 3-8).
        4 if max_basic >= 4 => {
            let [a, b, c, d] = host(4, subleaf);
            [a & 0x3FFF, b, c, d]
        }
        7 if max_basic >= 7 && subleaf == 0 => {
            let [_, b, c, _] = host(7, 0);
            let mut ecx = c & ECX7_ALLOWED;
            if policy.pkru {
                ecx |= c & ECX7_PKU;
                if policy.guest_cr4 & CR4_PKE != 0 && c & ECX7_PKU != 0 {
                    ecx |= ECX7_OSPKE;
                }
            }
            [0, b & EBX7_ALLOWED, ecx, 0]
        }
        HV_BASE => {
            let w = |i: usize| {
                u32::from_le_bytes([
                    SIGNATURE[i],
                    SIGNATURE[i + 1],
                    SIGNATURE[i + 2],
                    SIGNATURE[i + 3],
                ])
            };
            [HV_MAX, w(0), w(4), w(8)]
        }
        0x4000_0001 => [HV_FEATURES, 0, 0, 0],
        0x8000_0000 => {
            let [_, b, c, d] = host(0x8000_0000, 0);
            [max_ext.max(0x8000_0000), b, c, d]
        }
        0x8000_0001 if max_ext >= 0x8000_0001 => {
            let [a, _, c, d] = host(0x8000_0001, 0);
            [a, 0, c & ECX81_ALLOWED, d & EDX81_ALLOWED]
        }
        // Brand string, L1 and L2/L3 cache and TLB information.
        0x8000_0002..=0x8000_0006 if leaf <= max_ext => host(leaf, 0),
        // Address sizes (EAX) only: no core counts (ECX), no speculation-control
        // features (EBX).
        0x8000_0008 if max_ext >= 0x8000_0008 => [host(0x8000_0008, 0)[0] & 0xFFFF, 0, 0, 0],
        _ => zero,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that sets every bit of every leaf, with leaf maxima 0x20 / 0x8000_0021.
    fn everything(leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0x20, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
            0x8000_0000 => [0x8000_0021, 1, 2, 3],
            _ => [u32::MAX; 4],
        }
    }

    fn cpuid(l: u32, s: u32) -> [u32; 4] {
        leaf(l, s, Policy::default(), everything)
    }

    #[test]
    fn no_virtualization_features_and_the_hypervisor_bit() {
        let [_, b, c, d] = cpuid(1, 0);
        assert_eq!(c & ECX1_VMX, 0);
        assert_eq!(c & (1 << 6), 0, "SMX");
        assert_ne!(c & ECX1_HYPERVISOR, 0);
        assert_eq!(
            c & (ECX1_XSAVE | 1 << 27 | 1 << 28),
            0,
            "XSAVE, OSXSAVE, AVX"
        );
        assert_eq!(c & (1 << 17), 0, "PCID");
        assert_eq!(c & (1 << 21 | 1 << 24), 0, "x2APIC, TSC deadline");
        assert_eq!(c & (1 << 3), 0, "MONITOR");
        assert_eq!(d & (1 << 9), 0, "APIC");
        assert_eq!(d & (1 << 28), 0, "HTT");
        assert_eq!(d & (1 << 7 | 1 << 14), 0, "MCE, MCA");
        assert_eq!(b >> 16, 0, "one logical processor, APIC ID 0");
        assert_ne!(d & (1 << 24 | 1 << 25), 0, "FXSR, SSE");
        assert_eq!(cpuid(0x8000_0001, 0)[2] & ECX81_SVM, 0);
        assert_eq!(cpuid(0x8000_0001, 0)[3] & (1 << 27), 0, "RDTSCP");
        assert_ne!(cpuid(0x8000_0001, 0)[3] & (1 << 29), 0, "LM");
        assert_eq!(cpuid(0x8000_000A, 0), [0; 4], "the host's SVM leaf");
    }

    #[test]
    fn leaf_ranges_and_topology() {
        assert_eq!(cpuid(0, 0)[0], MAX_BASIC);
        assert_eq!(cpuid(0, 0)[1], 0x756E_6547, "vendor passes");
        assert_eq!(cpuid(0x8000_0000, 0)[0], MAX_EXTENDED);
        assert_eq!(cpuid(0xB, 0), [0; 4], "no topology leaf");
        assert_eq!(cpuid(0xD, 0), [0; 4], "no XSAVE leaf");
        assert_eq!(cpuid(4, 0)[0] >> 14, 0, "no sharing counts");
        assert_eq!(cpuid(0x8000_0008, 0)[1..], [0; 3]);
        let [a, b, c, d] = cpuid(7, 0);
        assert_eq!(a, 0);
        assert_eq!(
            b & (1 << 10 | 1 << 5 | 1 << 1),
            0,
            "INVPCID, AVX2, TSC_ADJUST"
        );
        assert_eq!(c & (ECX7_PKU | 1 << 22 | 1 << 16), 0, "PKU, RDPID, LA57");
        assert_eq!(d, 0);
        assert_eq!(cpuid(7, 1), [0; 4]);
        // A host with fewer leaves bounds ours.
        let small = |l: u32, _| {
            if l == 0 {
                [1, 0, 0, 0]
            } else if l == 0x8000_0000 {
                [0x8000_0001, 0, 0, 0]
            } else {
                [u32::MAX; 4]
            }
        };
        assert_eq!(leaf(0, 0, Policy::default(), small)[0], 1);
        assert_eq!(leaf(7, 0, Policy::default(), small), [0; 4]);
        assert_eq!(leaf(0x8000_0008, 0, Policy::default(), small), [0; 4]);
    }

    #[test]
    fn hypervisor_leaves() {
        let [a, b, c, d] = cpuid(HV_BASE, 0);
        assert_eq!(a, HV_MAX);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&sig, SIGNATURE);
        assert_eq!(cpuid(0x4000_0001, 0), [HV_FEATURES, 0, 0, 0]);
        assert_eq!(cpuid(0x4000_0002, 0), [0; 4]);
    }

    #[test]
    fn pku_only_when_pkru_is_switched() {
        let p = Policy {
            pkru: true,
            guest_cr4: 0,
        };
        assert_eq!(
            leaf(7, 0, p, everything)[2] & (ECX7_PKU | ECX7_OSPKE),
            ECX7_PKU
        );
        let p = Policy {
            pkru: true,
            guest_cr4: CR4_PKE,
        };
        assert_eq!(
            leaf(7, 0, p, everything)[2] & (ECX7_PKU | ECX7_OSPKE),
            ECX7_PKU | ECX7_OSPKE
        );
    }
}
