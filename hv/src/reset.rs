//! Whole-guest snapshot and reset (SNAPSHOT and RESET hypercalls, issue 14).
//!
//! SNAPSHOT freezes the guest's memory contents copy-on-write
//! ([`GuestMemory::snapshot`], i.e. `ept::space::AddressSpace::snapshot`) and keeps a
//! copy of its vCPU made by the back-end's fork ([`VcpuHost::fork`]: the whole VMCB or
//! VMCS guest state, so general, control and segment registers, the MSRs the CPU
//! switches, the software-switched state and x87/SSE), plus the MSRs only the
//! hypervisor models ([`crate::cpu::msr::MsrFile`]). The copy sits at the instruction
//! after the hypercall with RAX = 0, and never runs.
//!
//! RESET restores the memory (only the pages changed since: `AddressSpace::restore`)
//! and replaces the running vCPU with a fresh fork of the saved copy, with RAX = the
//! number of resets so far: the guest resumes after its SNAPSHOT call as if it had just
//! returned, and cannot tell the iterations apart except by RAX. The fresh vCPU has a
//! new ASID/VPID and the memory's flush request, so no stale translation survives.
//!
//! Both calls change nothing when they fail (RAX = a negative [`HypercallStatus`]):
//! no snapshot, a stale one (the guest changed its areas since), no vCPU slot, over
//! the quota. A refusal no guest can handle (no host frames, bookkeeping budget
//! exhausted; see [`status_or_end`]) ends the guest instead.

use alloc::format;
use alloc::string::String;

use crate::abi::HypercallStatus;
use crate::cpu::msr::MsrFile;
use crate::hypervisor::VcpuHost;
use crate::memory::GuestMemory;
use crate::outcome::GuestEnd;
use crate::vcpu::{FlushRequest, Reg, Vcpu};
use crate::vm::{Vm, status_or_end};

/// Timer ticks per second (`kernel::timer::HZ`): the unit of [`Vm::ticks`].
const TICKS_PER_SECOND: u64 = 100;

/// The saved vCPU of a guest's snapshot.
struct Saved<V> {
    vcpu: V,
    msrs: MsrFile,
}

/// A guest's snapshot (its saved vCPU; the memory keeps its own part) and what its
/// resets cost.
pub struct Snapshots<V> {
    saved: Option<Saved<V>>,
    resets: u64,
    pages: u64,
    ticks_at_snapshot: u64,
    ticks_at_reset: u64,
}

impl<V> Default for Snapshots<V> {
    fn default() -> Self {
        Self {
            saved: None,
            resets: 0,
            pages: 0,
            ticks_at_snapshot: 0,
            ticks_at_reset: 0,
        }
    }
}

impl<V> Snapshots<V> {
    /// Resets done since the last snapshot.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// One line for the guest's report: resets per second of guest time and pages
    /// restored per reset (`None` before the first reset).
    pub fn report(&self) -> Option<String> {
        if self.resets == 0 {
            return None;
        }
        let ticks = self.ticks_at_reset - self.ticks_at_snapshot;
        let per_reset = self.pages as f64 / self.resets as f64;
        let rate = if ticks == 0 {
            format!(
                "within one timer tick (> {} resets/s)",
                self.resets * TICKS_PER_SECOND
            )
        } else {
            let seconds = ticks as f64 / TICKS_PER_SECOND as f64;
            format!(
                "in {seconds:.2} s ({:.0} resets/s)",
                self.resets as f64 / seconds
            )
        };
        Some(format!(
            "{} resets {rate}, {per_reset:.1} pages restored per reset",
            self.resets
        ))
    }

    /// The saved vCPU, for its release.
    pub fn into_saved(self) -> Option<V> {
        self.saved.map(|s| s.vcpu)
    }
}

/// Puts `status` in RAX, or returns the guest's end for a refusal that ends it.
fn refused<V: Vcpu>(vcpu: &mut V, status: Result<HypercallStatus, GuestEnd>) -> Option<GuestEnd> {
    match status {
        Ok(status) => {
            vcpu.set_reg(Reg::Rax, status as i64 as u64);
            None
        }
        Err(end) => Some(end),
    }
}

/// SNAPSHOT: saves the vCPU (RIP is past the hypercall) and the memory contents.
/// Returns the guest's end when the refusal ends it.
pub fn snapshot<H: VcpuHost, M: GuestMemory>(
    host: &mut H,
    vm: &mut Vm<H::Vcpu, M>,
) -> Option<GuestEnd> {
    vm.vcpu.set_reg(Reg::Rax, 0);
    // The copy never runs: it needs no flush request of its own.
    let Some(copy) = host.fork(&vm.vcpu, vm.memory.root_pointer(), FlushRequest::new()) else {
        return refused(&mut vm.vcpu, Ok(HypercallStatus::Unsupported));
    };
    if let Err(e) = vm.memory.snapshot() {
        host.destroy(copy);
        if vm.notices.admit(&vm.name) {
            log::warn!("guest {}: snapshot refused: {}", vm.name, e.detail);
        }
        return refused(&mut vm.vcpu, status_or_end(e));
    }
    let saved = Saved {
        vcpu: copy,
        msrs: vm.msrs.clone(),
    };
    if let Some(old) = vm.snapshots.saved.replace(saved) {
        host.destroy(old.vcpu);
    }
    let now = vm.ticks();
    let s = &mut vm.snapshots;
    (s.resets, s.pages, s.ticks_at_snapshot, s.ticks_at_reset) = (0, 0, now, now);
    None
}

/// RESET: restores the memory and replaces the vCPU with a fork of the saved one.
/// Returns the guest's end when the refusal ends it.
pub fn reset<H: VcpuHost, M: GuestMemory>(
    host: &mut H,
    vm: &mut Vm<H::Vcpu, M>,
) -> Option<GuestEnd> {
    let Some(saved) = &vm.snapshots.saved else {
        return refused(&mut vm.vcpu, Ok(HypercallStatus::InvalidArgument));
    };
    // The new vCPU first: without a slot nothing has changed yet.
    let root = vm.memory.root_pointer();
    let Some(mut fresh) = host.fork(&saved.vcpu, root, vm.flush.clone()) else {
        return refused(&mut vm.vcpu, Ok(HypercallStatus::Unsupported));
    };
    let msrs = saved.msrs.clone();
    let pages = match vm.memory.reset() {
        Ok(pages) => pages,
        Err(e) => {
            host.destroy(fresh);
            if vm.notices.admit(&vm.name) {
                log::warn!("guest {}: reset refused: {}", vm.name, e.detail);
            }
            return refused(&mut vm.vcpu, status_or_end(e));
        }
    };
    let s = &mut vm.snapshots;
    s.resets += 1;
    s.pages += pages;
    fresh.set_reg(Reg::Rax, s.resets);
    let old = core::mem::replace(&mut vm.vcpu, fresh);
    host.destroy(old);
    vm.msrs = msrs;
    vm.snapshots.ticks_at_reset = vm.ticks();
    vm.flush.request();
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Expectation;
    use crate::testing::{FakeHost, FakeMemory, ScriptedVcpu};
    use crate::vcpu::StartState;

    fn guest(host: &mut FakeHost) -> Vm<ScriptedVcpu, FakeMemory> {
        let start = StartState::Long64 {
            entry: 0x10_0040,
            rsp: 0x10_0000,
            cr3: 0x1000,
        };
        let vcpu = host.create(&start, 0x1000, FlushRequest::new()).unwrap();
        let mut memory = FakeMemory::default();
        memory
            .areas
            .push((0x1000, 4 << 20, ept::format::Access::RWX));
        Vm::new(1, "g".into(), Expectation::Ok, vcpu, memory)
    }

    fn rax(vm: &Vm<ScriptedVcpu, FakeMemory>) -> i64 {
        vm.vcpu.reg(Reg::Rax) as i64
    }

    #[test]
    fn reset_brings_back_memory_registers_and_msrs() {
        let mut host = FakeHost::new(4, alloc::vec![]);
        let mut vm = guest(&mut host);
        vm.vcpu.set_reg(Reg::Rbx, 7);
        vm.vcpu.set_reg(Reg::Rip, 0x10_1000);
        vm.memory.write(0x5000, &[1]).unwrap();
        vm.msrs.misc_enable = 1;
        snapshot(&mut host, &mut vm);
        assert_eq!(rax(&vm), 0);
        for round in 1..=3 {
            vm.vcpu.set_reg(Reg::Rbx, 9);
            vm.vcpu.set_reg(Reg::Rip, 0x10_2000);
            vm.memory.write(0x5000, &[2]).unwrap();
            vm.msrs.misc_enable = 2;
            reset(&mut host, &mut vm);
            assert_eq!(rax(&vm), round, "the reset count comes back in RAX");
            assert_eq!(vm.vcpu.reg(Reg::Rbx), 7);
            assert_eq!(vm.vcpu.reg(Reg::Rip), 0x10_1000);
            let mut b = [0];
            vm.memory.read(0x5000, &mut b).unwrap();
            assert_eq!(b, [1]);
            assert_eq!(vm.msrs.misc_enable, 1);
            assert!(vm.flush.take(), "a reset invalidates before the next entry");
        }
        assert_eq!(vm.snapshots.resets(), 3);
        let line = vm.snapshots.report().unwrap();
        assert!(line.starts_with("3 resets"), "{line}");
        assert!(line.contains("1.0 pages restored per reset"), "{line}");
        // Two vCPUs alive (the guest's and the saved copy): both go back.
        let Vm {
            vcpu, snapshots, ..
        } = vm;
        host.destroy(vcpu);
        host.destroy(snapshots.into_saved().unwrap());
        assert_eq!(host.slots, 4);
    }

    #[test]
    fn refusals_change_nothing() {
        let mut host = FakeHost::new(2, alloc::vec![]);
        let mut vm = guest(&mut host);
        // No snapshot yet.
        vm.vcpu.set_reg(Reg::Rbx, 5);
        reset(&mut host, &mut vm);
        assert_eq!(rax(&vm), HypercallStatus::InvalidArgument as i64);
        assert_eq!(vm.vcpu.reg(Reg::Rbx), 5);
        // The saved copy takes the last slot: a reset finds none for the new vCPU.
        snapshot(&mut host, &mut vm);
        assert_eq!(rax(&vm), 0);
        vm.memory.write(0x5000, &[2]).unwrap();
        reset(&mut host, &mut vm);
        assert_eq!(rax(&vm), HypercallStatus::Unsupported as i64);
        let mut b = [0];
        vm.memory.read(0x5000, &mut b).unwrap();
        assert_eq!(b, [2], "memory untouched by a refused reset");
        assert_eq!(vm.snapshots.report(), None);
        // No slot for the saved copy: the snapshot is refused.
        let mut full = FakeHost::new(1, alloc::vec![]);
        let mut other = guest(&mut full);
        snapshot(&mut full, &mut other);
        assert_eq!(rax(&other), HypercallStatus::Unsupported as i64);
        assert!(other.memory.frozen.is_none());
    }
}
