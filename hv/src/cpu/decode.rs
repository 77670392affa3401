//! The length of an intercepted instruction, read from guest memory: for SVM without
//! NRIPS (QEMU's TCG), where #VMEXIT reports neither the next RIP nor the length
//! (AMD APM vol. 2 15.7.1). A prefixed form (`REX.W RDMSR`, `CS CPUID`, `66 VMMCALL`)
//! is longer than the bare opcode, and resuming in its middle would run the guest's
//! bytes as other instructions.
//!
//! [`fetch`] reads up to 15 bytes at CS:RIP through the guest's own page tables
//! (4-level long-mode paging, or none); [`decode`] parses the prefixes (legacy groups
//! 1-4, REX in 64-bit mode; Intel SDM vol. 2A 2.1-2.2.1, AMD APM vol. 3 1.2) and the
//! opcode of the instructions that exit. Anything else, or bytes that do not make an
//! instruction of the kind that exited, is refused with a reason, and the guest ends.

use core::fmt;

use crate::vcpu::CodeSegment;

/// Longest x86 instruction (SDM vol. 2A 2.1).
pub const MAX_LENGTH: usize = 15;

/// An instruction that causes an exit, as decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// HLT (`f4`).
    Hlt,
    /// CPUID (`0f a2`).
    Cpuid,
    /// RDMSR (`0f 32`).
    Rdmsr,
    /// WRMSR (`0f 30`).
    Wrmsr,
    /// VMMCALL (`0f 01 d9`).
    Vmmcall,
    /// VMCALL (`0f 01 c1`).
    Vmcall,
    /// WBINVD (`0f 09`).
    Wbinvd,
    /// INVD (`0f 08`).
    Invd,
    /// MOV to or from a control register (`0f 22 /r`, `0f 20 /r`, register operand).
    MovCr {
        /// To the control register (`0f 22`).
        write: bool,
        /// The control register (ModRM.reg + REX.R).
        cr: u8,
        /// The general-purpose register (ModRM.rm + REX.B).
        gpr: u8,
    },
    /// Another `0f 01` instruction with a register-form ModRM (VMRUN `d8`, VMLOAD `da`,
    /// VMSAVE `db`, STGI `dc`, CLGI `dd`, SKINIT `de`, INVLPGA `df`, XSETBV `d1`,
    /// MONITOR `c8`, MWAIT `c9`, RDTSCP `f9`, ...): the ModRM byte.
    Group7(u8),
}

/// Why an instruction's length cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end (unmapped page, or 15 bytes of prefixes) before the opcode does.
    Truncated,
    /// An opcode this decoder does not know (none of the intercepted instructions).
    Unknown {
        /// The first opcode byte after the prefixes.
        opcode: u8,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "the instruction bytes end before the instruction"),
            Self::Unknown { opcode } => {
                write!(f, "opcode {opcode:#04x} is not an intercepted instruction")
            }
        }
    }
}

/// A decoded instruction: what it is and its length in bytes, prefixes included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The instruction.
    pub op: Op,
    /// Its length.
    pub len: u64,
}

/// Whether `b` is a legacy prefix: LOCK, REPNE, REP, segment overrides, operand and
/// address size (SDM vol. 2A 2.1.1).
fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65 | 0x66 | 0x67
    )
}

/// Decodes the instruction at the start of `bytes` in the code segment `cs`.
pub fn decode(bytes: &[u8], cs: CodeSegment) -> Result<Decoded, DecodeError> {
    let bytes = &bytes[..bytes.len().min(MAX_LENGTH)];
    let mut i = 0;
    let mut rex = 0u8;
    loop {
        let b = *bytes.get(i).ok_or(DecodeError::Truncated)?;
        if is_legacy_prefix(b) {
            // A legacy prefix after REX makes the REX ignored (SDM vol. 2A 2.2.1).
            rex = 0;
        } else if cs.long && (0x40..=0x4F).contains(&b) {
            rex = b;
        } else {
            break;
        }
        i += 1;
    }
    let at = |k: usize| bytes.get(i + k).copied().ok_or(DecodeError::Truncated);
    let done = |op, n: usize| {
        Ok(Decoded {
            op,
            len: (i + n) as u64,
        })
    };
    let opcode = at(0)?;
    match opcode {
        0xF4 => done(Op::Hlt, 1),
        0x0F => match at(1)? {
            0xA2 => done(Op::Cpuid, 2),
            0x32 => done(Op::Rdmsr, 2),
            0x30 => done(Op::Wrmsr, 2),
            0x09 => done(Op::Wbinvd, 2),
            0x08 => done(Op::Invd, 2),
            0x01 => match at(2)? {
                0xD9 => done(Op::Vmmcall, 3),
                0xC1 => done(Op::Vmcall, 3),
                modrm if modrm >= 0xC0 => done(Op::Group7(modrm), 3),
                _ => Err(DecodeError::Unknown { opcode }),
            },
            second @ (0x20 | 0x22) => {
                // MOV CRn always uses the register form, whatever ModRM.mod says (SDM
                // vol. 2B "MOV—Move to/from Control Registers").
                let modrm = at(2)?;
                done(
                    Op::MovCr {
                        write: second == 0x22,
                        cr: ((modrm >> 3) & 7) | ((rex & 0x4) << 1),
                        gpr: (modrm & 7) | ((rex & 0x1) << 3),
                    },
                    3,
                )
            }
            _ => Err(DecodeError::Unknown { opcode }),
        },
        _ => Err(DecodeError::Unknown { opcode }),
    }
}

/// Page-table entry bits (SDM vol. 3A 5.5, table 5-15..5-20; AMD APM vol. 2 5.3).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_LARGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;
/// CR0.PG, CR4.PAE, EFER.LMA.
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;

/// Why guest code could not be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// The guest pages with 32-bit or PAE paging, which this walker does not follow.
    UnsupportedPaging,
    /// The linear address is not mapped by the guest's page tables.
    NotMapped {
        /// The linear address.
        linear: u64,
    },
    /// A page-table entry or the code lies outside the guest's memory.
    Unreadable {
        /// The guest-physical address.
        gpa: u64,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedPaging => write!(f, "the guest uses 32-bit or PAE paging"),
            Self::NotMapped { linear } => {
                write!(f, "linear {linear:#x} is not mapped by the guest")
            }
            Self::Unreadable { gpa } => write!(f, "guest-physical {gpa:#x} cannot be read"),
        }
    }
}

/// The paging state a translation needs: CR0, CR3, CR4, EFER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// Translates `linear` through the guest's page tables, reading entries with `read`.
pub fn translate(
    linear: u64,
    paging: Paging,
    read: &mut dyn FnMut(u64, &mut [u8]) -> bool,
) -> Result<u64, FetchError> {
    if paging.cr0 & CR0_PG == 0 {
        return Ok(linear);
    }
    if paging.cr4 & CR4_PAE == 0 || paging.efer & EFER_LMA == 0 {
        return Err(FetchError::UnsupportedPaging);
    }
    let mut table = paging.cr3 & PTE_ADDR;
    // PML4 (bits 47:39), PDPT (38:30), PD (29:21), PT (20:12).
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (linear >> shift) & 0x1FF;
        let gpa = table + index * 8;
        let mut e = [0u8; 8];
        if !read(gpa, &mut e) {
            return Err(FetchError::Unreadable { gpa });
        }
        let entry = u64::from_le_bytes(e);
        if entry & PTE_PRESENT == 0 {
            return Err(FetchError::NotMapped { linear });
        }
        // 1 GiB leaves at the PDPT, 2 MiB at the PD.
        if level == 0 || ((level == 1 || level == 2) && entry & PTE_LARGE != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Ok((entry & PTE_ADDR & !page_mask) | (linear & page_mask));
        }
        table = entry & PTE_ADDR;
    }
    unreachable!("level 0 always returns")
}

/// Reads up to [`MAX_LENGTH`] bytes of guest code at CS:`rip` into `buf`; returns how
/// many could be read (fewer when the next page is not mapped; at least one byte, or
/// an error).
pub fn fetch(
    cs: CodeSegment,
    rip: u64,
    paging: Paging,
    read: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    buf: &mut [u8; MAX_LENGTH],
) -> Result<usize, FetchError> {
    let mut linear = cs.base.wrapping_add(rip);
    if !cs.long {
        linear &= 0xFFFF_FFFF;
    }
    let mut done = 0;
    while done < MAX_LENGTH {
        let in_page = (4096 - (linear & 0xFFF)) as usize;
        let n = in_page.min(MAX_LENGTH - done);
        let gpa = match translate(linear, paging, read) {
            Ok(gpa) => gpa,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        if !read(gpa, &mut buf[done..done + n]) {
            // Part of the range is outside guest memory: take the bytes up to it.
            let got = (0..n)
                .take_while(|&k| read(gpa + k as u64, &mut buf[done + k..done + k + 1]))
                .count();
            if done + got == 0 {
                return Err(FetchError::Unreadable { gpa });
            }
            return Ok(done + got);
        }
        done += n;
        linear = linear.wrapping_add(n as u64);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use alloc::collections::BTreeMap;

    use super::*;

    const LONG: CodeSegment = CodeSegment {
        base: 0,
        long: true,
        default32: false,
    };
    const REAL: CodeSegment = CodeSegment {
        base: 0x1_0000,
        long: false,
        default32: false,
    };

    fn len(bytes: &[u8], cs: CodeSegment) -> Result<(Op, u64), DecodeError> {
        decode(bytes, cs).map(|d| (d.op, d.len))
    }

    #[test]
    fn bare_and_prefixed_forms() {
        assert_eq!(len(&[0x0F, 0x01, 0xD9], LONG), Ok((Op::Vmmcall, 3)));
        assert_eq!(len(&[0x0F, 0xA2, 0x90], LONG), Ok((Op::Cpuid, 2)));
        assert_eq!(len(&[0xF4], LONG), Ok((Op::Hlt, 1)));
        // REX.W RDMSR, CS-prefixed CPUID, operand-size + REX WRMSR.
        assert_eq!(len(&[0x48, 0x0F, 0x32], LONG), Ok((Op::Rdmsr, 3)));
        assert_eq!(len(&[0x2E, 0x0F, 0xA2], LONG), Ok((Op::Cpuid, 3)));
        assert_eq!(len(&[0x66, 0x41, 0x0F, 0x30], LONG), Ok((Op::Wrmsr, 4)));
        assert_eq!(
            len(&[0x64, 0x65, 0x3E, 0x0F, 0x01, 0xD9], LONG),
            Ok((Op::Vmmcall, 6))
        );
        assert_eq!(len(&[0x0F, 0x01, 0xC1], LONG), Ok((Op::Vmcall, 3)));
        assert_eq!(len(&[0xF3, 0x0F, 0x09], LONG), Ok((Op::Wbinvd, 3)));
        // 14 prefixes and a HLT: 15 bytes, the limit.
        let mut b = [0x2E; 15];
        b[14] = 0xF4;
        assert_eq!(len(&b, LONG), Ok((Op::Hlt, 15)));
        // 15 prefixes: no room for the opcode.
        assert_eq!(len(&[0x2E; 16], LONG), Err(DecodeError::Truncated));
        assert_eq!(len(&[0x48, 0x0F], LONG), Err(DecodeError::Truncated));
        assert_eq!(len(&[], LONG), Err(DecodeError::Truncated));
        assert_eq!(
            len(&[0x90], LONG),
            Err(DecodeError::Unknown { opcode: 0x90 })
        );
        assert_eq!(
            len(&[0x0F, 0x01, 0x10], LONG),
            Err(DecodeError::Unknown { opcode: 0x0F })
        );
    }

    #[test]
    fn rex_is_an_instruction_outside_long_mode() {
        // 0x48 is DEC EAX in 16/32-bit code: not a prefix.
        assert_eq!(
            len(&[0x48, 0x0F, 0x32], REAL),
            Err(DecodeError::Unknown { opcode: 0x48 })
        );
        assert_eq!(len(&[0x66, 0x0F, 0x01, 0xD9], REAL), Ok((Op::Vmmcall, 4)));
    }

    #[test]
    fn mov_cr_operands() {
        // mov cr8, rax = 44 0f 22 c0; mov rcx, cr4 = 0f 20 e1; mov cr3, r9 = 41 0f 22 d9.
        assert_eq!(
            len(&[0x44, 0x0F, 0x22, 0xC0], LONG),
            Ok((
                Op::MovCr {
                    write: true,
                    cr: 8,
                    gpr: 0
                },
                4
            ))
        );
        assert_eq!(
            len(&[0x0F, 0x20, 0xE1], LONG),
            Ok((
                Op::MovCr {
                    write: false,
                    cr: 4,
                    gpr: 1
                },
                3
            ))
        );
        assert_eq!(
            len(&[0x41, 0x0F, 0x22, 0xD9], LONG),
            Ok((
                Op::MovCr {
                    write: true,
                    cr: 3,
                    gpr: 9
                },
                4
            ))
        );
        // A REX followed by a legacy prefix is ignored.
        assert_eq!(
            len(&[0x44, 0x66, 0x0F, 0x22, 0xC0], LONG),
            Ok((
                Op::MovCr {
                    write: true,
                    cr: 0,
                    gpr: 0
                },
                5
            ))
        );
        assert_eq!(len(&[0x0F, 0x01, 0xDF], LONG), Ok((Op::Group7(0xDF), 3)));
    }

    /// Guest memory as a byte map.
    fn memory(entries: &[(u64, u64)], code: &[(u64, &[u8])]) -> BTreeMap<u64, u8> {
        let mut m = BTreeMap::new();
        for &(gpa, v) in entries {
            for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                m.insert(gpa + k as u64, b);
            }
        }
        for &(gpa, bytes) in code {
            for (k, b) in bytes.iter().enumerate() {
                m.insert(gpa + k as u64, *b);
            }
        }
        m
    }

    fn reader(m: &BTreeMap<u64, u8>) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
        |gpa, buf| {
            for (k, b) in buf.iter_mut().enumerate() {
                match m.get(&(gpa + k as u64)) {
                    Some(v) => *b = *v,
                    None => return false,
                }
            }
            true
        }
    }

    const LONG_PAGING: Paging = Paging {
        cr0: CR0_PG | 1,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
    };

    #[test]
    fn walks_four_levels_with_large_and_small_leaves() {
        // Linear 0x40_0FFE..: PML4[0] -> 0x2000, PDPT[0] -> 0x3000, PD[2] -> PT 0x4000,
        // PT[0] -> 0x9000, PT[1] -> 0x7000 (the instruction crosses into another frame).
        // Linear 0x4000_0000 is a 1 GiB leaf at GPA 0x8000_0000.
        let m = memory(
            &[
                (0x1000, 0x2003),
                (0x2000, 0x3003),
                (0x2008, 0x8000_0083),
                (0x2010, 0),
                (0x3010, 0x4003),
                (0x4000, 0x9003),
                (0x4008, 0x7003),
            ],
            &[
                (0x9FFE, &[0x48, 0x0F]),
                (0x7000, &[0x32, 0x90]),
                (0x8000_0010, &[0xF4]),
            ],
        );
        let mut buf = [0; MAX_LENGTH];
        let n = fetch(LONG, 0x40_0FFE, LONG_PAGING, &mut reader(&m), &mut buf);
        // The second page holds only 2 readable bytes: the fetch ends after them.
        assert_eq!(n, Ok(4));
        assert_eq!(
            decode(&buf[..4], LONG),
            Ok(Decoded {
                op: Op::Rdmsr,
                len: 3
            })
        );
        assert_eq!(
            translate(0x40_1000, LONG_PAGING, &mut reader(&m)),
            Ok(0x7000)
        );
        assert_eq!(
            translate(0x4000_0010, LONG_PAGING, &mut reader(&m)),
            Ok(0x8000_0010)
        );
        assert_eq!(
            translate(0x8000_0000, LONG_PAGING, &mut reader(&m)),
            Err(FetchError::NotMapped {
                linear: 0x8000_0000
            })
        );
        assert_eq!(
            translate(0x80_0000_0000, LONG_PAGING, &mut reader(&m)),
            Err(FetchError::Unreadable { gpa: 0x1008 })
        );
        let legacy = Paging {
            efer: 0,
            ..LONG_PAGING
        };
        assert_eq!(
            translate(0, legacy, &mut reader(&m)),
            Err(FetchError::UnsupportedPaging)
        );
    }

    #[test]
    fn real_mode_fetch_adds_the_segment_base() {
        let m = memory(&[], &[(0x1_0100, &[0x0F, 0x01, 0xD9])]);
        let mut buf = [0; MAX_LENGTH];
        let no_paging = Paging {
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
        };
        let mut read = reader(&m);
        assert_eq!(fetch(REAL, 0x100, no_paging, &mut read, &mut buf), Ok(3));
        assert_eq!(
            decode(&buf[..3], REAL),
            Ok(Decoded {
                op: Op::Vmmcall,
                len: 3
            })
        );
        assert_eq!(
            fetch(REAL, 0x200, no_paging, &mut read, &mut buf),
            Err(FetchError::Unreadable { gpa: 0x1_0200 })
        );
    }
}
