//! Privileged CPU primitives the test guests probe the virtual CPU with: CPUID, MSRs,
//! control and debug registers, SWAPGS, PKRU, and the instructions a guest must not be
//! allowed to use against the host. Every one either runs on the guest's own state or
//! exits to the hypervisor, which emulates it, injects a fault, or ends the guest: it
//! cannot reach the hypervisor's or another guest's state, which is what the scenarios
//! check.

use core::arch::asm;

/// Whether the guest runs under Intel VMX (else AMD SVM), by the CPUID vendor.
pub fn on_intel() -> bool {
    crate::on_intel()
}

/// CPUID `leaf`/`subleaf` as `[eax, ebx, ecx, edx]` (Intel SDM vol. 2A "CPUID").
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// CPUID `leaf` (subleaf 0) with a CS segment-override prefix (`2e 0f a2`, 3 bytes):
/// the prefix changes nothing, but the hypervisor must skip all three bytes.
pub fn cpuid_cs_prefixed(leaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u32);
    // SAFETY: CPUID only writes EAX, EBX, ECX and EDX; RBX is saved around it (LLVM
    // reserves it).
    unsafe {
        asm!(
            "mov {b}, rbx",
            ".byte 0x2e, 0x0f, 0xa2",
            "xchg {b}, rbx",
            b = out(reg) b,
            inlateout("eax") leaf => a,
            inlateout("ecx") 0u32 => c,
            out("edx") d,
            options(nomem, nostack, preserves_flags)
        )
    };
    [a, b as u32, c, d]
}

/// RDMSR `msr` (SDM vol. 2B "RDMSR"); an unknown MSR raises #GP in the guest.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR exits to the hypervisor, which returns the virtual MSR's value in
    // EDX:EAX or injects #GP (which, without an IDT, ends this guest).
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// RDMSR with a REX.W prefix (`48 0f 32`, 3 bytes; REX.W changes nothing for RDMSR).
pub fn rdmsr_rex_w(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: as in `rdmsr`.
    unsafe {
        asm!(".byte 0x48, 0x0f, 0x32", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR `value` to `msr` (SDM vol. 2B "WRMSR").
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: WRMSR exits to the hypervisor, which changes only this vCPU's virtual MSR
    // (or injects #GP); the guest's scenarios write only MSRs they own the effect of.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nomem, nostack, preserves_flags))
    };
}

macro_rules! register_access {
    ($(#[$doc:meta])* $read:ident, $write:ident, $reg:literal) => {
        $(#[$doc])*
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading a control or debug register at CPL 0 has no side effects.
            unsafe {
                asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags))
            };
            v
        }

        $(#[$doc])*
        pub fn $write(value: u64) {
            // SAFETY: the scenarios write values that keep the guest running (addresses
            // into DR0-DR3 with breakpoints disabled in DR7, status bits into DR6, a
            // priority into CR8, an address into CR2); the register is this vCPU's.
            unsafe {
                asm!(concat!("mov ", $reg, ", {}"), in(reg) value, options(nomem, nostack, preserves_flags))
            };
        }
    };
}

register_access!(
    /// DR0 (SDM vol. 3B 18.2).
    read_dr0, write_dr0, "dr0"
);
register_access!(
    /// DR1.
    read_dr1, write_dr1, "dr1"
);
register_access!(
    /// DR2.
    read_dr2, write_dr2, "dr2"
);
register_access!(
    /// DR3.
    read_dr3, write_dr3, "dr3"
);
register_access!(
    /// DR6.
    read_dr6, write_dr6, "dr6"
);
register_access!(
    /// DR7 (scenarios keep the enable bits clear).
    read_dr7, write_dr7, "dr7"
);
register_access!(
    /// CR2 (SDM vol. 3A 2.5).
    read_cr2, write_cr2, "cr2"
);
register_access!(
    /// CR8, the task priority (SDM vol. 3A 2.5).
    read_cr8, write_cr8, "cr8"
);

/// CR4 (SDM vol. 3A 2.5).
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sets the bits `bits` in CR4 (a bit the CPU does not offer raises #GP).
pub fn set_cr4_bits(bits: u64) {
    // SAFETY: the scenarios set only PKE and OSXSAVE, which change no translation of
    // the guest's own (supervisor) pages.
    unsafe {
        asm!("mov {0}, cr4", "or {0}, {1}", "mov cr4, {0}", out(reg) _, in(reg) bits,
            options(nomem, nostack))
    };
}

/// RDTSCP: the TSC and IA32_TSC_AUX (ECX) (SDM vol. 2B "RDTSCP"). AMD SVM runs it
/// natively (not offered by CPUID, but executable); VMX raises #UD.
pub fn rdtscp_aux() -> u32 {
    let aux: u32;
    // SAFETY: RDTSCP only reads the TSC and TSC_AUX into EDX:EAX and ECX.
    unsafe {
        asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux,
            options(nomem, nostack, preserves_flags))
    };
    aux
}

/// SWAPGS: exchanges GS.base and IA32_KERNEL_GS_BASE (SDM vol. 2B "SWAPGS").
pub fn swapgs() {
    // SAFETY: the guest does not use GS; the exchange touches only this vCPU's state.
    unsafe { asm!("swapgs", options(nomem, nostack, preserves_flags)) };
}

/// RDPKRU (needs CR4.PKE; SDM vol. 2B "RDPKRU").
pub fn rdpkru() -> u32 {
    let v: u32;
    // SAFETY: reads PKRU only; ECX must be 0.
    unsafe {
        asm!("rdpkru", out("eax") v, in("ecx") 0, out("edx") _,
            options(nomem, nostack, preserves_flags))
    };
    v
}

/// WRPKRU (needs CR4.PKE): the guest maps no user pages, so keys restrict nothing.
pub fn wrpkru(value: u32) {
    // SAFETY: PKRU only restricts user pages, which the guest does not map; ECX = EDX =
    // 0 as the instruction requires.
    unsafe {
        asm!("wrpkru", in("eax") value, in("ecx") 0, in("edx") 0,
            options(nomem, nostack, preserves_flags))
    };
}

/// An instruction a guest must not be able to use against the host. Each one exits
/// to the hypervisor, which ends the guest with the instruction's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// INVD: discards dirty cache lines without writing them back.
    Invd,
    /// XSETBV: XCR0 is host state (sets CR4.OSXSAVE first).
    Xsetbv,
    /// RDPMC: the host's performance counters.
    Rdpmc,
    /// AMD: INVLPGA of ASID 0 (the host's translations).
    Invlpga,
    /// AMD: VMRUN (nested virtualization).
    Vmrun,
    /// AMD: VMLOAD (reads a host-physical page).
    Vmload,
    /// AMD: VMSAVE (writes a host-physical page).
    Vmsave,
    /// AMD: STGI.
    Stgi,
    /// AMD: CLGI.
    Clgi,
    /// AMD: SKINIT.
    Skinit,
    /// Intel: VMXON.
    Vmxon,
    /// Intel: VMCLEAR.
    Vmclear,
    /// Intel: VMPTRLD.
    Vmptrld,
    /// Intel: VMREAD.
    Vmread,
    /// Intel: VMWRITE.
    Vmwrite,
    /// Intel: VMLAUNCH.
    Vmlaunch,
    /// Intel: INVEPT (all contexts).
    Invept,
    /// Intel: INVVPID (all contexts).
    Invvpid,
}

/// CR4.OSXSAVE (SDM vol. 3A 2.5).
const CR4_OSXSAVE: u64 = 1 << 18;

/// Executes `what`. `page` is a page-aligned address inside the guest's own RAM that
/// serves as the memory operand (VMCB, VMCS region, descriptor) where one is needed.
pub fn try_forbidden(what: Forbidden, page: u64) {
    if what == Forbidden::Xsetbv {
        set_cr4_bits(CR4_OSXSAVE);
    }
    /// Runs one forbidden instruction.
    macro_rules! forbidden {
        ($($asm:tt)*) => {
            // SAFETY: every instruction here is intercepted by the hypervisor (AMD APM
            // vol. 2 15.9-15.14; the VMX ones exit unconditionally, SDM vol. 3C 26.1.2)
            // before it has any effect, and ends this guest; if one were not
            // intercepted it would act on the guest's own page `page` (a VMCB/VMCS
            // region or descriptor) or TLB, which is exactly the breach the scenario
            // reports.
            unsafe { asm!($($asm)*) }
        };
    }
    let descriptor = [0u64; 2];
    match what {
        Forbidden::Invd => forbidden!("invd", options(nostack)),
        Forbidden::Rdpmc => {
            forbidden!("rdpmc", in("ecx") 0, out("eax") _, out("edx") _, options(nostack))
        }
        Forbidden::Xsetbv => {
            forbidden!("xsetbv", in("ecx") 0, in("eax") 3, in("edx") 0, options(nostack))
        }
        Forbidden::Invlpga => {
            forbidden!("invlpga rax, ecx", in("rax") page, in("ecx") 0, options(nostack))
        }
        Forbidden::Vmrun => forbidden!("vmrun rax", in("rax") page, options(nostack)),
        Forbidden::Vmload => forbidden!("vmload rax", in("rax") page, options(nostack)),
        Forbidden::Vmsave => forbidden!("vmsave rax", in("rax") page, options(nostack)),
        Forbidden::Stgi => forbidden!("stgi", options(nostack)),
        Forbidden::Clgi => forbidden!("clgi", options(nostack)),
        Forbidden::Skinit => forbidden!("skinit eax", in("eax") page as u32, options(nostack)),
        Forbidden::Vmxon => forbidden!("vmxon [{}]", in(reg) &page, options(nostack)),
        Forbidden::Vmclear => forbidden!("vmclear [{}]", in(reg) &page, options(nostack)),
        Forbidden::Vmptrld => forbidden!("vmptrld [{}]", in(reg) &page, options(nostack)),
        Forbidden::Vmread => {
            forbidden!("vmread {}, {}", out(reg) _, in(reg) 0x681Eu64, options(nostack))
        }
        Forbidden::Vmwrite => {
            forbidden!("vmwrite {}, {}", in(reg) 0x681Eu64, in(reg) page, options(nostack))
        }
        Forbidden::Vmlaunch => forbidden!("vmlaunch", options(nostack)),
        Forbidden::Invept => {
            forbidden!("invept {}, [{}]", in(reg) 2u64, in(reg) &descriptor, options(nostack))
        }
        Forbidden::Invvpid => {
            forbidden!("invvpid {}, [{}]", in(reg) 2u64, in(reg) &descriptor, options(nostack))
        }
    }
}
