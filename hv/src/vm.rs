//! One guest: its vCPU, its memory, its console line, and the handling of its exits
//! (`exits`).

use alloc::string::String;

use crate::abi::{HypercallStatus, access};
use ept::format::Access;

use crate::cpu::msr::MsrFile;
use crate::exit_stats::ExitCounts;
use crate::memory::{GuestMemory, MemoryError};
use crate::notices::Notices;
use crate::outcome::{Expectation, FaultKind, GuestEnd};
use crate::reset::Snapshots;
use crate::system::FullSystem;
use crate::vcpu::{FlushRequest, Vcpu};

mod exits;

/// Longest guest line printed; the rest is cut.
const MAX_LINE: usize = 160;
/// Most lines a guest may print (a guest must not flood the host console).
const MAX_LINES: u32 = 2000;

/// What the run loop must do after one exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Resume this guest.
    Continue,
    /// Let other guests run, then resume this one.
    Yield,
    /// The guest's time slice ended (timer tick): run the others, then resume it.
    Preempted,
    /// Clone this guest (CLONE hypercall): the loop creates the child and sets RAX in
    /// both.
    Clone,
    /// Snapshot this guest, memory and vCPU (SNAPSHOT hypercall; see `crate::reset`).
    Snapshot,
    /// Reset this guest to its snapshot (RESET hypercall; see `crate::reset`).
    Reset,
    /// The guest has ended.
    Ended(GuestEnd),
}

/// A guest and its state.
pub struct Vm<V: Vcpu, M: GuestMemory> {
    /// Its id (1, 2, ...).
    pub id: u64,
    /// Its name.
    pub name: String,
    /// What counts as a pass.
    pub expect: Expectation,
    /// Its vCPU.
    pub vcpu: V,
    /// Its memory.
    pub memory: M,
    /// The devices of a full-system guest (Linux); `None` for the tiny guests, whose
    /// only device is the COM1 data port.
    pub system: Option<FullSystem>,
    /// The MSRs only the hypervisor models, for its vCPU.
    pub msrs: MsrFile,
    /// The invalidation request its memory and vCPU share.
    pub flush: FlushRequest,
    /// Its snapshot (a saved vCPU) and reset statistics.
    pub snapshots: Snapshots<V>,
    /// What the hypervisor logged about it, bounded.
    pub notices: Notices,
    /// The exception injected at the last exit (for the report of a triple fault that
    /// follows at once).
    injected: Option<String>,
    line: String,
    lines: u32,
    exits: u64,
    ticks: u64,
    exit_counts: ExitCounts,
}

impl<V: Vcpu, M: GuestMemory> Vm<V, M> {
    /// A guest ready to run.
    pub fn new(id: u64, name: String, expect: Expectation, vcpu: V, memory: M) -> Self {
        Self {
            id,
            name,
            expect,
            vcpu,
            memory,
            system: None,
            msrs: MsrFile::default(),
            flush: FlushRequest::new(),
            snapshots: Snapshots::default(),
            notices: Notices::default(),
            injected: None,
            line: String::new(),
            lines: 0,
            exits: 0,
            ticks: 0,
            exit_counts: ExitCounts::default(),
        }
    }

    /// Exits by reason (for the report).
    pub fn exit_counts(&self) -> &ExitCounts {
        &self.exit_counts
    }

    /// Exits taken so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    fn out_byte(&mut self, byte: u8, print: &mut dyn FnMut(&str)) {
        if byte == b'\n' {
            self.flush_line(print);
        } else if self.line.len() < MAX_LINE && byte != b'\r' {
            let c = if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '.'
            };
            self.line.push(c);
        }
    }

    /// Prints what is left of the guest's current line.
    pub fn flush_line(&mut self, print: &mut dyn FnMut(&str)) {
        if self.lines < MAX_LINES {
            print(&self.line);
        } else if self.lines == MAX_LINES {
            print("(further output of this guest is dropped)");
        }
        self.lines = self.lines.saturating_add(1);
        self.line.clear();
    }

    /// Whether a partial line is pending.
    pub fn has_partial_line(&self) -> bool {
        !self.line.is_empty()
    }

    /// Timer ticks this guest has been running for.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

/// Access rights from the hypercall's bits; `None` for unknown bits.
pub fn rights(bits: u64) -> Option<Access> {
    if bits & !(access::READ | access::WRITE | access::EXECUTE) != 0 {
        return None;
    }
    let mut a = Access::empty();
    a.set(Access::READ, bits & access::READ != 0);
    a.set(Access::WRITE, bits & access::WRITE != 0);
    a.set(Access::EXECUTE, bits & access::EXECUTE != 0);
    Some(a)
}

/// The status a refused memory hypercall returns, or the guest's end when the
/// refusal ends it: running out of bookkeeping (the guest grew its areas or shares
/// past its budget) or of host frames (the host is short: the guest that asked ends,
/// with that reason) is not something a guest can handle by retrying.
pub fn status_or_end(e: MemoryError) -> Result<HypercallStatus, GuestEnd> {
    log::debug!("hypercall refused: {}", e.detail);
    Ok(match e.kind {
        FaultKind::Metadata | FaultKind::HostMemory => return Err(end_of(e)),
        FaultKind::Quota => HypercallStatus::NoMemory,
        FaultKind::Unmapped => HypercallStatus::NotMapped,
        FaultKind::Read | FaultKind::Write | FaultKind::Exec => HypercallStatus::Denied,
        _ => HypercallStatus::InvalidArgument,
    })
}

fn fault(kind: FaultKind, gpa: Option<u64>, detail: String) -> GuestEnd {
    GuestEnd::Fault { kind, gpa, detail }
}

/// The guest end for a memory error.
pub fn end_of(e: MemoryError) -> GuestEnd {
    GuestEnd::Fault {
        kind: e.kind,
        gpa: e.gpa,
        detail: e.detail,
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;
    use crate::abi::hypercall;
    use crate::cpu::vector;
    use crate::testing::{FakeMemory, ScriptStep, ScriptedVcpu, s2_fault};
    use crate::vcpu::{ArchReg, Reg, VmExit};

    fn vm(script: Vec<ScriptStep>) -> Vm<ScriptedVcpu, FakeMemory> {
        let mut memory = FakeMemory::default();
        memory.areas.push((0x1000, 4 << 20, Access::RWX));
        memory.areas.push((0x100_0000, 0x101_0000, Access::READ));
        Vm::new(
            1,
            "t".into(),
            Expectation::Ok,
            ScriptedVcpu::new(script),
            memory,
        )
    }

    fn out(byte: u8) -> ScriptStep {
        (
            vec![(Reg::Rax, 0xAB00 | u64::from(byte))],
            VmExit::Io {
                port: 0x3f8,
                size: 1,
                write: true,
                string: false,
            },
        )
    }

    fn call(nr: u64, a0: u64, a1: u64, a2: u64) -> ScriptStep {
        (
            vec![
                (Reg::Rax, nr),
                (Reg::Rdi, a0),
                (Reg::Rsi, a1),
                (Reg::Rdx, a2),
            ],
            VmExit::Hypercall,
        )
    }

    fn run_all(vm: &mut Vm<ScriptedVcpu, FakeMemory>, lines: &mut Vec<String>) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            let s = vm.step(1000, 1000, &mut |l| lines.push(l.into()));
            let end = matches!(s, Step::Ended(_));
            steps.push(s);
            if end {
                return steps;
            }
        }
    }

    #[test]
    fn hlt_of_a_full_system_guest_is_decoded_and_skipped_without_nrips() {
        let mut v = vm(vec![(
            vec![(Reg::Rip, 0x2000), (Reg::Rflags, 0x202)],
            VmExit::Hlt,
        )]);
        v.vcpu.length_known = false;
        v.memory.write(0x2000, &[0xF4]).unwrap();
        v.system = Some(FullSystem::default());
        assert_eq!(v.step(100, 100, &mut |_| {}), Step::Continue);
        assert_eq!(v.vcpu.reg(Reg::Rip), 0x2001, "RIP past the HLT");
    }

    #[test]
    fn serial_bytes_become_prefixed_lines() {
        let mut v = vm(vec![
            out(b'h'),
            out(b'i'),
            out(b'\n'),
            out(b'\x07'),
            out(b'x'),
        ]);
        let mut lines = Vec::new();
        let steps = run_all(&mut v, &mut lines);
        assert_eq!(steps.last(), Some(&Step::Ended(GuestEnd::Halted)));
        assert_eq!(lines, ["hi"]);
        assert!(v.has_partial_line());
        v.flush_line(&mut |l| lines.push(l.into()));
        assert_eq!(lines, ["hi", ".x"]);
        assert_eq!(v.vcpu.skipped, 5);
    }

    #[test]
    fn other_ports_and_string_io_end_the_guest() {
        for exit in [
            VmExit::Io {
                port: 0xf4,
                size: 4,
                write: true,
                string: false,
            },
            VmExit::Io {
                port: 0x3f8,
                size: 1,
                write: true,
                string: true,
            },
        ] {
            let mut v = vm(vec![(vec![], exit)]);
            let s = v.step(10, 1000, &mut |_| {});
            assert!(
                matches!(
                    s,
                    Step::Ended(GuestEnd::Fault {
                        kind: FaultKind::Io,
                        ..
                    })
                ),
                "{s:?}"
            );
            assert_eq!(v.vcpu.skipped, 0);
        }
    }

    #[test]
    fn serial_status_reads_merge_into_rax() {
        let mut v = vm(vec![(
            vec![(Reg::Rax, 0x1234_5678)],
            VmExit::Io {
                port: 0x3fd,
                size: 1,
                write: false,
                string: false,
            },
        )]);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(v.vcpu.reg(Reg::Rax), 0x1234_5660);
    }

    #[test]
    fn hypercalls_return_results_in_rax() {
        let mut v = vm(vec![call(hypercall::LEAF_SIZE, 0x2000, 0, 0)]);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(v.vcpu.reg(Reg::Rax), 4096);

        let mut v = vm(vec![call(hypercall::LEAF_SIZE, 0x300_0000, 0, 0)]);
        v.step(10, 1000, &mut |_| {});
        assert_eq!(v.vcpu.reg(Reg::Rax), 0, "unmapped GPA has no leaf");

        let mut v = vm(vec![call(
            hypercall::PROTECT,
            0x10_0000,
            0x1000,
            access::READ,
        )]);
        v.step(10, 1000, &mut |_| {});
        assert_eq!(v.vcpu.reg(Reg::Rax), 0);
        assert_eq!(v.memory.log, ["protect 0x100000+0x1000 Access(READ)"]);

        let mut v = vm(vec![call(hypercall::PROTECT, 0x10_0000, 0x1000, 8)]);
        v.step(10, 1000, &mut |_| {});
        assert_eq!(
            v.vcpu.reg(Reg::Rax) as i64,
            HypercallStatus::InvalidArgument as i64
        );
        assert!(v.memory.log.is_empty());

        let mut v = vm(vec![call(hypercall::PROTECT, 0x10_0001, 0x1000, 1)]);
        v.step(10, 1000, &mut |_| {});
        assert_eq!(
            v.vcpu.reg(Reg::Rax) as i64,
            HypercallStatus::InvalidArgument as i64
        );

        let mut v = vm(vec![call(hypercall::UNMAP, 0x10_0000, 0x2000, 0)]);
        v.step(10, 1000, &mut |_| {});
        assert_eq!(v.memory.log, ["unmap 0x100000+0x2000"]);

        let mut v = vm(vec![call(hypercall::HOST_READ, 0x5000, 0, 0)]);
        v.memory.write(0x5000, &0xfeed_u64.to_le_bytes()).unwrap();
        v.step(10, 1000, &mut |_| {});
        assert_eq!(v.vcpu.reg(Reg::Rax), 0xfeed);

        let mut v = vm(vec![call(hypercall::HOST_READ, 0x300_0000, 0, 0)]);
        v.step(10, 1000, &mut |_| {});
        assert_eq!(
            v.vcpu.reg(Reg::Rax) as i64,
            HypercallStatus::NotMapped as i64
        );
    }

    #[test]
    fn control_hypercalls() {
        let mut v = vm(vec![
            call(hypercall::YIELD, 0, 0, 0),
            call(hypercall::CLONE, 0, 0, 0),
            call(hypercall::EXIT, 5, 0, 0),
        ]);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Yield);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Clone);
        assert_eq!(
            v.step(10, 1000, &mut |_| {}),
            Step::Ended(GuestEnd::Exited(5))
        );
        assert_eq!(v.vcpu.skipped, 3);
        let mut v = vm(vec![call(77, 0, 0, 0)]);
        assert!(matches!(
            v.step(10, 1000, &mut |_| {}),
            Step::Ended(GuestEnd::Fault {
                kind: FaultKind::Hypercall,
                ..
            })
        ));
    }

    #[test]
    fn stage2_faults_are_served_or_end_the_guest() {
        let mut v = vm(vec![
            (vec![], s2_fault(0x20_0000, Access::WRITE)),
            (vec![], s2_fault(0x100_0000, Access::WRITE)),
        ]);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(v.memory.faults, 1);
        assert_eq!(
            v.step(10, 1000, &mut |_| {}),
            Step::Ended(GuestEnd::Fault {
                kind: FaultKind::Write,
                gpa: Some(0x100_0000),
                detail: "denied".into()
            })
        );
        let mut v = vm(vec![(vec![], s2_fault(0x9000_0000, Access::READ))]);
        assert!(matches!(
            v.step(10, 1000, &mut |_| {}),
            Step::Ended(GuestEnd::Fault {
                kind: FaultKind::Unmapped,
                gpa: Some(0x9000_0000),
                ..
            })
        ));
    }

    #[test]
    fn other_exits() {
        let mut v = vm(vec![
            // PAT (reset value set below), then a write of a new one.
            (
                vec![(Reg::Rcx, 0x277), (Reg::Rax, 9), (Reg::Rdx, 9)],
                VmExit::Msr { write: false },
            ),
            (
                vec![
                    (Reg::Rcx, 0x277),
                    (Reg::Rax, 0x0004_0106),
                    (Reg::Rdx, 0x0007_0406),
                ],
                VmExit::Msr { write: true },
            ),
            // An unknown MSR: #GP(0), nothing skipped; the triple fault that follows
            // names it.
            (vec![(Reg::Rcx, 0xDEAD_BEEF)], VmExit::Msr { write: false }),
            (vec![], VmExit::Shutdown),
            (vec![(Reg::Rax, 0), (Reg::Rcx, 0)], VmExit::Cpuid),
            (vec![], VmExit::Shutdown),
        ]);
        v.vcpu.set_arch(ArchReg::Pat, crate::vcpu::state::PAT_RESET);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(
            (v.vcpu.reg(Reg::Rax), v.vcpu.reg(Reg::Rdx)),
            (0x0007_0406, 0x0007_0406)
        );
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(v.vcpu.arch(ArchReg::Pat), 0x0007_0406_0004_0106);
        assert_eq!(v.vcpu.skipped, 2);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(v.vcpu.injected, [(vector::GP, Some(0))]);
        assert_eq!(v.vcpu.skipped, 2, "a faulting RDMSR is not skipped");
        let shutdown = |v: &mut Vm<ScriptedVcpu, FakeMemory>| {
            let Step::Ended(GuestEnd::Fault {
                kind: FaultKind::Shutdown,
                detail,
                ..
            }) = v.step(10, 1000, &mut |_| {})
            else {
                panic!("no shutdown");
            };
            detail
        };
        let detail = shutdown(&mut v);
        assert!(
            detail.contains("after #GP injected for RDMSR of MSR 0xdeadbeef"),
            "{detail}"
        );
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(
            v.vcpu.reg(Reg::Rax),
            7,
            "CPUID leaf 0 reports leaf 7 as the highest"
        );
        // A triple fault after other exits does not blame an old #GP.
        let detail = shutdown(&mut v);
        assert!(!detail.contains("after"), "{detail}");
        for exit in [
            VmExit::Forbidden { what: "VMRUN" },
            VmExit::InvalidState { code: u64::MAX },
            VmExit::Unknown {
                code: 0x65,
                info1: 0,
                info2: 0,
            },
        ] {
            let mut v = vm(vec![(vec![], exit)]);
            assert!(matches!(
                v.step(10, 1000, &mut |_| {}),
                Step::Ended(GuestEnd::Fault {
                    kind: FaultKind::Instruction,
                    ..
                })
            ));
        }
    }

    #[test]
    fn lengths_unknown_to_the_hardware_are_decoded_from_guest_memory() {
        // No guest paging (CR0.PG = 0): RIP is the guest-physical address.
        let steps = vec![
            (
                vec![(Reg::Rip, 0x5000), (Reg::Rax, 0), (Reg::Rcx, 0)],
                VmExit::Cpuid,
            ),
            (
                vec![(Reg::Rip, 0x5010), (Reg::Rcx, 0x277)],
                VmExit::Msr { write: false },
            ),
            (vec![(Reg::Rip, 0x5020)], VmExit::Cpuid),
        ];
        let mut v = vm(steps);
        v.vcpu.length_known = false;
        v.vcpu.set_arch(ArchReg::Pat, crate::vcpu::state::PAT_RESET);
        // CS CPUID; REX.W RDMSR; at 0x5020 a RDMSR where CPUID exited.
        v.memory.write(0x5000, &[0x2E, 0x0F, 0xA2]).unwrap();
        v.memory.write(0x5010, &[0x48, 0x0F, 0x32]).unwrap();
        v.memory.write(0x5020, &[0x0F, 0x32]).unwrap();
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(v.vcpu.reg(Reg::Rip), 0x5003);
        assert_eq!(v.step(10, 1000, &mut |_| {}), Step::Continue);
        assert_eq!(v.vcpu.reg(Reg::Rip), 0x5013);
        let Step::Ended(GuestEnd::Fault { kind, detail, .. }) = v.step(10, 1000, &mut |_| {})
        else {
            panic!("a mismatching instruction must end the guest");
        };
        assert_eq!(kind, FaultKind::Instruction);
        assert!(detail.contains("Rdmsr, not the Cpuid"), "{detail}");
    }

    #[test]
    fn timer_ticks_preempt_and_then_end_a_spinning_guest() {
        let mut v = vm(vec![(vec![], VmExit::Interrupt); 5]);
        assert_eq!(v.step(10, 3, &mut |_| {}), Step::Preempted);
        assert_eq!(v.step(10, 3, &mut |_| {}), Step::Preempted);
        assert!(matches!(
            v.step(10, 3, &mut |_| {}),
            Step::Ended(GuestEnd::Fault {
                kind: FaultKind::Timeout,
                ..
            })
        ));
        assert_eq!(v.ticks(), 3);
        assert_eq!(v.vcpu.skipped, 0, "an interrupt exit skips no instruction");
    }

    #[test]
    fn runaway_guests_are_stopped() {
        let mut v = vm(vec![out(b'a'); 10]);
        for _ in 0..3 {
            assert_eq!(v.step(3, 1000, &mut |_| {}), Step::Continue);
        }
        assert_eq!(
            v.step(3, 1000, &mut |_| {}),
            Step::Ended(GuestEnd::ExitLimit(3))
        );
    }

    #[test]
    fn guest_output_is_capped() {
        let mut v = vm(Vec::new());
        let mut lines = 0;
        for _ in 0..MAX_LINES + 10 {
            v.out_byte(b'\n', &mut |_| lines += 1);
        }
        // Every allowed line, then one notice.
        assert_eq!(lines, MAX_LINES + 1);
    }

    #[test]
    fn rights_from_bits() {
        assert_eq!(rights(access::READ | access::EXECUTE), Some(Access::RX));
        assert_eq!(rights(0), Some(Access::empty()));
        assert_eq!(rights(8), None);
    }
}
