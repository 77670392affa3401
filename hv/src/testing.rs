//! Test doubles for host tests of the VM logic and the scheduler: a scripted vCPU, an
//! in-memory guest memory, a vCPU host with a fixed number of slots, and a console
//! that records lines.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use ept::caps::Stage2Caps;
use ept::fault::{FaultKind as S2Kind, Stage2Fault};
use ept::format::Access;

use crate::hypervisor::VcpuHost;
use crate::memory::{GuestMemory, MemoryError, permission_kind};
use crate::outcome::FaultKind;
use crate::platform::Console;
use crate::settings::{AreaKind, GuestSettings};
use crate::vcpu::{ArchReg, CodeSegment, FlushRequest, Reg, StartState, Vcpu, VmExit};

/// One scripted exit: registers the "guest" sets, then the exit it takes.
pub type ScriptStep = (Vec<(Reg, u64)>, VmExit);

/// A vCPU that replays a script.
pub struct ScriptedVcpu {
    /// Registers by [`Reg`] number.
    pub regs: [u64; 18],
    /// Remaining exits; when empty the vCPU halts.
    pub script: VecDeque<ScriptStep>,
    /// Instructions skipped.
    pub skipped: u32,
    /// The stage-2 root it was created with.
    pub root: u64,
    /// RAX at each entry (what the hypervisor returned to the guest).
    pub rax_at_entry: Vec<u64>,
    /// Architectural state by [`ArchReg`] number.
    pub arch: [u64; ArchReg::ALL.len()],
    /// Exceptions injected: `(vector, error code)`.
    pub injected: Vec<(u8, Option<u32>)>,
    /// Whether exits report their instruction length (false: like SVM without NRIPS).
    pub length_known: bool,
    /// The length set by the exit handler for the last exit.
    pub length_set: Option<u64>,
    /// The code segment.
    pub cs: CodeSegment,
}

impl ScriptedVcpu {
    /// A vCPU that will take `script`'s exits in order.
    pub fn new(script: Vec<ScriptStep>) -> Self {
        Self {
            regs: [0; 18],
            script: script.into(),
            skipped: 0,
            root: 0,
            rax_at_entry: Vec::new(),
            arch: [0; ArchReg::ALL.len()],
            injected: Vec::new(),
            length_known: true,
            length_set: None,
            cs: CodeSegment {
                base: 0,
                long: true,
                default32: false,
            },
        }
    }
}

impl Vcpu for ScriptedVcpu {
    fn run(&mut self) -> VmExit {
        self.rax_at_entry.push(self.regs[Reg::Rax as usize]);
        let Some((regs, exit)) = self.script.pop_front() else {
            return VmExit::Hlt;
        };
        for (r, v) in regs {
            self.regs[r as usize] = v;
        }
        exit
    }

    fn reg(&self, reg: Reg) -> u64 {
        self.regs[reg as usize]
    }

    fn set_reg(&mut self, reg: Reg, value: u64) {
        self.regs[reg as usize] = value;
    }

    fn skip_instruction(&mut self) {
        self.skipped += 1;
        if let Some(len) = self.length_set.take() {
            self.regs[Reg::Rip as usize] += len;
        }
    }

    fn instruction_length_known(&self) -> bool {
        self.length_known
    }

    fn set_instruction_length(&mut self, len: u64) {
        self.length_set = Some(len);
    }

    fn code_segment(&self) -> CodeSegment {
        self.cs
    }

    fn arch(&self, reg: ArchReg) -> u64 {
        self.arch[reg as usize]
    }

    fn set_arch(&mut self, reg: ArchReg, value: u64) {
        self.arch[reg as usize] = value;
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.injected.push((vector, error_code));
    }
}

/// Guest memory as a sparse byte map: RAM at `[0x1000, mem)` and RAM areas, each with
/// rights; every touched page counts as a 4 KiB leaf (2 MiB at and above 64 MiB).
#[derive(Clone, Default)]
pub struct FakeMemory {
    /// `(start, end, rights)`.
    pub areas: Vec<(u64, u64, Access)>,
    /// Bytes written.
    pub bytes: BTreeMap<u64, u8>,
    /// Faults served.
    pub faults: u64,
    /// Operations seen (`protect ...`, `unmap ...`).
    pub log: Vec<String>,
    /// The bytes at the last snapshot.
    pub frozen: Option<BTreeMap<u64, u8>>,
}

impl FakeMemory {
    fn area(&self, gpa: u64) -> Option<(u64, u64, Access)> {
        self.areas
            .iter()
            .copied()
            .find(|&(s, e, _)| s <= gpa && gpa < e)
    }
}

impl GuestMemory for FakeMemory {
    type Shared = ();

    fn attach_shared(
        &mut self,
        _settings: &GuestSettings,
        _shared: &mut (),
    ) -> Result<(), MemoryError> {
        Ok(())
    }

    fn balloon(&mut self, gpa: u64, _size: u64) -> Result<(u64, u64), MemoryError> {
        match self.area(gpa) {
            Some(_) => Ok((0, 0)),
            None => Err(MemoryError::new(
                FaultKind::Unmapped,
                Some(gpa),
                "no area".into(),
            )),
        }
    }

    fn create(
        settings: &GuestSettings,
        _caps: Stage2Caps,
        _flush: FlushRequest,
    ) -> Result<Self, MemoryError> {
        let mut m = Self::default();
        m.areas.push((0x1000, settings.mem, Access::RWX));
        for a in &settings.areas {
            let access = match a.kind {
                AreaKind::Ram {
                    read,
                    write,
                    execute,
                    ..
                } => {
                    let mut x = Access::empty();
                    x.set(Access::READ, read);
                    x.set(Access::WRITE, write);
                    x.set(Access::EXECUTE, execute);
                    x
                }
                AreaKind::Mmio => Access::RW,
                AreaKind::Window { write: true, .. } => Access::RW,
                AreaKind::Window { write: false, .. } => Access::READ,
            };
            m.areas.push((a.gpa, a.gpa + a.size, access));
        }
        Ok(m)
    }

    fn root_pointer(&self) -> u64 {
        0x1000
    }

    fn handle_fault(&mut self, fault: Stage2Fault) -> Result<(), MemoryError> {
        let gpa = usize::from(fault.gpa) as u64;
        match self.area(gpa) {
            None => Err(MemoryError::new(
                FaultKind::Unmapped,
                Some(gpa),
                "unmapped".into(),
            )),
            Some((_, _, a)) if !a.contains(fault.access) => Err(MemoryError::new(
                permission_kind(fault.access),
                Some(gpa),
                "denied".into(),
            )),
            Some(_) => {
                self.faults += 1;
                Ok(())
            }
        }
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        for (i, b) in bytes.iter().enumerate() {
            self.bytes.insert(gpa + i as u64, *b);
        }
        Ok(())
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if self.area(gpa).is_none() {
            return Err(MemoryError::new(
                FaultKind::Unmapped,
                Some(gpa),
                "unmapped".into(),
            ));
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.bytes.get(&(gpa + i as u64)).copied().unwrap_or(0);
        }
        Ok(())
    }

    fn leaf_size(&self, gpa: u64) -> Option<u64> {
        self.area(gpa)
            .map(|_| if gpa >= 64 << 20 { 2 << 20 } else { 4096 })
    }

    fn protect(&mut self, gpa: u64, size: u64, access: Access) -> Result<(), MemoryError> {
        if !gpa.is_multiple_of(4096) {
            return Err(MemoryError::new(
                FaultKind::Hypercall,
                Some(gpa),
                "unaligned".into(),
            ));
        }
        self.log
            .push(format!("protect {gpa:#x}+{size:#x} {access:?}"));
        Ok(())
    }

    fn unmap(&mut self, gpa: u64, size: u64) -> Result<(), MemoryError> {
        self.log.push(format!("unmap {gpa:#x}+{size:#x}"));
        Ok(())
    }

    fn try_clone(&mut self, _flush: FlushRequest) -> Result<Self, MemoryError> {
        Ok(self.clone())
    }

    fn snapshot(&mut self) -> Result<(), MemoryError> {
        self.frozen = Some(self.bytes.clone());
        Ok(())
    }

    fn reset(&mut self) -> Result<u64, MemoryError> {
        let frozen = self
            .frozen
            .clone()
            .ok_or_else(|| MemoryError::new(FaultKind::Hypercall, None, "no snapshot".into()))?;
        let changed = self
            .bytes
            .iter()
            .filter(|(a, b)| frozen.get(a) != Some(b))
            .count()
            + frozen
                .keys()
                .filter(|a| !self.bytes.contains_key(a))
                .count();
        self.bytes = frozen;
        Ok(changed as u64)
    }

    fn faults_handled(&self) -> u64 {
        self.faults
    }

    fn report(&self) -> String {
        format!("  fake memory: {} area(s)", self.areas.len())
    }
}

/// A vCPU host with `slots` vCPUs; the n-th vCPU created replays `scripts[n]`.
pub struct FakeHost {
    /// Scripts by creation order (forks get an empty script: they halt at once).
    pub scripts: VecDeque<Vec<ScriptStep>>,
    /// Free slots.
    pub slots: usize,
    /// Most vCPUs alive at once.
    pub peak: usize,
    /// The RAX history of every destroyed vCPU, in destruction order.
    pub finished: Vec<Vec<u64>>,
    /// The start state of every vCPU created (not forked), in creation order.
    pub starts: Vec<StartState>,
    /// Whether [`VcpuHost::real_mode_support`] says yes (default true).
    pub real_mode: bool,
    alive: usize,
}

impl FakeHost {
    /// A host with `slots` slots and one script per guest.
    pub fn new(slots: usize, scripts: Vec<Vec<ScriptStep>>) -> Self {
        Self {
            scripts: scripts.into(),
            slots,
            peak: 0,
            finished: Vec::new(),
            starts: Vec::new(),
            real_mode: true,
            alive: 0,
        }
    }

    fn take(&mut self) -> bool {
        if self.slots == 0 {
            return false;
        }
        self.slots -= 1;
        self.alive += 1;
        self.peak = self.peak.max(self.alive);
        true
    }
}

impl VcpuHost for FakeHost {
    type Vcpu = ScriptedVcpu;

    fn describe(&self) -> String {
        "fake host".into()
    }

    fn stage2_caps(&self) -> Stage2Caps {
        Stage2Caps::all()
    }

    fn real_mode_support(&self) -> Result<(), &'static str> {
        if self.real_mode {
            Ok(())
        } else {
            Err("the fake host has no real mode")
        }
    }

    fn create(&mut self, start: &StartState, root: u64, _f: FlushRequest) -> Option<ScriptedVcpu> {
        if !self.take() {
            return None;
        }
        let mut v = ScriptedVcpu::new(self.scripts.pop_front().unwrap_or_default());
        let (rip, rsp) = match *start {
            StartState::Long64 { entry, rsp, .. } => (entry, rsp),
            StartState::Real16 { ip, sp, .. } => (u64::from(ip), u64::from(sp)),
        };
        v.regs[Reg::Rip as usize] = rip;
        v.regs[Reg::Rsp as usize] = rsp;
        self.starts.push(*start);
        v.root = root;
        Some(v)
    }

    fn fork(&mut self, parent: &ScriptedVcpu, root: u64, _f: FlushRequest) -> Option<ScriptedVcpu> {
        if !self.take() {
            return None;
        }
        let mut v = ScriptedVcpu::new(self.scripts.pop_front().unwrap_or_default());
        v.regs = parent.regs;
        v.root = root;
        Some(v)
    }

    fn destroy(&mut self, vcpu: ScriptedVcpu) {
        self.finished.push(vcpu.rax_at_entry);
        self.slots += 1;
        self.alive -= 1;
    }

    fn free_slots(&self) -> usize {
        self.slots
    }
}

/// A console that keeps every line.
#[derive(Default)]
pub struct RecordingConsole {
    /// The lines written.
    pub lines: Vec<String>,
}

impl Console for RecordingConsole {
    fn write_fmt_line(&mut self, args: core::fmt::Arguments<'_>) {
        self.lines.push(format!("{args}"));
    }
}

/// A stage-2 fault at `gpa` for `access`, not present.
pub fn s2_fault(gpa: u64, access: Access) -> VmExit {
    VmExit::Stage2Fault(Stage2Fault {
        gpa: memory_set::GuestPhysAddr::from(gpa as usize),
        access,
        kind: S2Kind::NotPresent,
        in_guest_walk: false,
    })
}
