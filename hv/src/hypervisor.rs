//! The hypervisor proper: validates the boot configuration, picks the vCPU back-end,
//! runs every guest in turn, reports each one's end and stage-2 state, checks for
//! leaked frames and decides the run's status.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{GuestMode, HypercallStatus, ImageHeader, RunStatus};
use ept::caps::Stage2Caps;
use ept::format::Npt;

use crate::layout::{
    MIN_LOAD_GPA, PML4_GPA, REAL_MODE_MIN_LOAD_GPA, STACK_TOP, guest_page_tables, real_mode_start,
};
use crate::memory::{GuestMemory, MemoryError};
use crate::outcome::{FaultKind, GuestEnd};
use ept::frame::FrameAlloc;

use crate::loader::linux::{self, LinuxBoot};
use crate::platform::{Console, GlobalFrames, frame_usage};
use crate::settings::{GuestKind, GuestSettings, HvSettings, SelfTest, parse_guest_cmdline};
use crate::space_memory::SpaceMemory;
use crate::svm::{SvmHost, SvmVcpu};
use crate::system::FullSystem;
use crate::vcpu::{FlushRequest, Reg, StartState, Vcpu};
use crate::vm::{Step, Vm};

/// A boot module: a guest image and its command line.
pub struct BootModule {
    /// The module's command line (file name, then settings).
    pub cmdline: String,
    /// The image.
    pub image: Vec<u8>,
}

/// A vendor back-end that creates vCPUs (SVM here; VMX beside it).
pub trait VcpuHost {
    /// Its vCPU type.
    type Vcpu: Vcpu;
    /// One line describing the back-end and its capabilities.
    fn describe(&self) -> String;
    /// The stage-2 capabilities.
    fn stage2_caps(&self) -> Stage2Caps;
    /// Why this back-end cannot run real-mode guests, or `Ok` when it can.
    fn real_mode_support(&self) -> Result<(), &'static str>;
    /// A vCPU in the state `start` on stage-2 root pointer `root`; `None` when out of
    /// ASIDs/VPIDs (callers check [`VcpuHost::real_mode_support`] before asking for a
    /// real-mode vCPU).
    fn create(&mut self, start: &StartState, root: u64, flush: FlushRequest) -> Option<Self::Vcpu>;
    /// A copy of `parent` on stage-2 root `root`.
    fn fork(&mut self, parent: &Self::Vcpu, root: u64, flush: FlushRequest) -> Option<Self::Vcpu>;
    /// Releases a vCPU.
    fn destroy(&mut self, vcpu: Self::Vcpu);
    /// How many more vCPUs can exist now (free ASIDs/VPIDs).
    fn free_slots(&self) -> usize;
}

impl VcpuHost for SvmHost {
    type Vcpu = SvmVcpu;

    fn describe(&self) -> String {
        let c = self.caps();
        format!(
            "AMD SVM with nested paging: {} ASIDs, NRIPS {}, decode assists {}, 1G leaves {}",
            c.asids,
            yes(c.nrips),
            yes(c.decode_assists),
            yes(c.page_1g)
        )
    }

    fn stage2_caps(&self) -> Stage2Caps {
        Stage2Caps::npt(self.caps().page_1g)
    }

    fn real_mode_support(&self) -> Result<(), &'static str> {
        // VMRUN accepts CR0.PE = 0: "paged real mode" and real mode run natively
        // (AMD APM vol. 2, 15.5 "VMRUN"; with nested paging, 15.25.3).
        Ok(())
    }

    fn create(&mut self, start: &StartState, root: u64, flush: FlushRequest) -> Option<SvmVcpu> {
        self.create_vcpu(start, root, flush)
    }

    fn fork(&mut self, parent: &SvmVcpu, root: u64, flush: FlushRequest) -> Option<SvmVcpu> {
        self.fork_vcpu(parent, root, flush)
    }

    fn destroy(&mut self, vcpu: SvmVcpu) {
        self.destroy_vcpu(vcpu);
    }

    fn free_slots(&self) -> usize {
        self.free_asids()
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A validated guest, not yet created.
struct Prepared {
    settings: GuestSettings,
    kind: PreparedKind,
    image: Vec<u8>,
}

/// What a prepared guest boots.
enum PreparedKind {
    /// A flat image.
    Image(ImageHeader),
    /// A Linux bzImage with its zero page and initrd.
    Linux(alloc::boxed::Box<LinuxBoot>),
}

/// Checks one module: settings, image header, and that the image fits in RAM.
#[cfg(test)]
fn prepare(module: BootModule) -> Result<Prepared, String> {
    prepare_with(module, &mut Vec::new())
}

/// Checks one module: settings, then the image header and that the image fits in RAM,
/// or for a Linux guest the bzImage and its initrd, taken from `data` (modules by
/// file name).
fn prepare_with(module: BootModule, data: &mut Vec<(String, Vec<u8>)>) -> Result<Prepared, String> {
    let settings = parse_guest_cmdline(&module.cmdline).map_err(|e| format!("{e}"))?;
    if let GuestKind::Linux { initrd, cmdline } = &settings.kind {
        let initrd = match initrd {
            Some(name) => {
                let i = data
                    .iter()
                    .position(|(n, _)| n == name)
                    .ok_or_else(|| format!("no `data` module `{name}` for the initrd"))?;
                data.remove(i).1
            }
            None => return Err("a Linux guest needs initrd=FILE".into()),
        };
        let boot = LinuxBoot::new(&module.image, initrd, cmdline, settings.mem)
            .map_err(|e| format!("Linux image `{}`: {e}", settings.file))?;
        return Ok(Prepared {
            settings,
            kind: PreparedKind::Linux(alloc::boxed::Box::new(boot)),
            image: module.image,
        });
    }
    let header =
        ImageHeader::parse(&module.image).map_err(|e| format!("image `{}`: {e}", settings.file))?;
    let end = header.load_gpa + header.image_size;
    let min_load = match header.mode {
        GuestMode::Long64 => MIN_LOAD_GPA,
        GuestMode::Real16 => REAL_MODE_MIN_LOAD_GPA,
    };
    if header.load_gpa < min_load || end > settings.mem {
        return Err(format!(
            "image `{}` loads at {:#x}..{end:#x}, outside RAM {min_load:#x}..{:#x}",
            settings.file, header.load_gpa, settings.mem
        ));
    }
    Ok(Prepared {
        settings,
        kind: PreparedKind::Image(header),
        image: module.image,
    })
}

/// Runs the hypervisor over `modules` and returns the run's status.
pub fn start(
    settings: &HvSettings,
    modules: Vec<BootModule>,
    console: &mut dyn Console,
) -> RunStatus {
    let mut prepared = Vec::new();
    let mut refused = 0;
    // `data` modules (initrds) first, by file name; guests take theirs from here.
    let (data_modules, modules): (Vec<_>, Vec<_>) = modules
        .into_iter()
        .partition(|m| parse_guest_cmdline(&m.cmdline).is_ok_and(|s| s.kind == GuestKind::Data));
    let mut data: Vec<(String, Vec<u8>)> = data_modules
        .into_iter()
        .filter_map(|m| {
            let s = parse_guest_cmdline(&m.cmdline).ok()?;
            Some((s.file_name().into(), m.image))
        })
        .collect();
    for module in modules {
        let line = module.cmdline.clone();
        match prepare_with(module, &mut data) {
            Ok(p) => prepared.push(p),
            Err(e) => {
                console.write_fmt_line(format_args!("[hv] module `{line}` REFUSED: {e}"));
                refused += 1;
            }
        }
    }
    for (name, _) in &data {
        console.write_fmt_line(format_args!(
            "[hv] data module `{name}` REFUSED: no guest uses it"
        ));
        refused += 1;
    }
    if refused > 0 || prepared.is_empty() {
        if prepared.is_empty() && refused == 0 {
            console.write_fmt_line(format_args!("[hv] no guest modules given"));
        }
        console.write_fmt_line(format_args!("HV: CONFIGURATION REFUSED"));
        return RunStatus::BadConfig;
    }
    if crate::vmx::cpu_has_vmx() {
        return match crate::vmx::VmxHost::enable() {
            Ok(mut host) => run_all::<crate::vmx::VmxHost, SpaceMemory<ept::format::Ept>>(
                &mut host, settings, prepared, console,
            ),
            Err(e) => {
                console.write_fmt_line(format_args!("[hv] VMX unavailable: {e}"));
                console.write_fmt_line(format_args!("HV: UNSUPPORTED CPU"));
                RunStatus::Unsupported
            }
        };
    }
    match SvmHost::enable() {
        Ok(mut host) => {
            run_all::<SvmHost, SpaceMemory<Npt>>(&mut host, settings, prepared, console)
        }
        Err(e) => {
            console.write_fmt_line(format_args!("[hv] SVM unavailable: {e}"));
            console.write_fmt_line(format_args!("HV: UNSUPPORTED CPU"));
            RunStatus::Unsupported
        }
    }
}

fn create_vm<H: VcpuHost, M: GuestMemory>(
    host: &mut H,
    id: u64,
    p: &Prepared,
    shared: &mut M::Shared,
) -> Result<Vm<H::Vcpu, M>, MemoryError> {
    let header = match &p.kind {
        PreparedKind::Image(h) => h,
        PreparedKind::Linux(boot) => return create_linux_vm::<H, M>(host, id, p, boot),
    };
    let start = match header.mode {
        GuestMode::Long64 => StartState::Long64 {
            entry: header.entry_gpa,
            rsp: STACK_TOP,
            cr3: PML4_GPA,
        },
        GuestMode::Real16 => {
            host.real_mode_support().map_err(|why| {
                MemoryError::new(
                    FaultKind::Instruction,
                    None,
                    format!("real-mode guest refused: {why}"),
                )
            })?;
            // `ImageHeader::parse` and `prepare` keep real-mode images below 640 KiB
            // with the entry within 64 KiB of the 4 KiB-aligned load address.
            real_mode_start(header.load_gpa, header.entry_gpa).ok_or_else(|| {
                MemoryError::new(
                    FaultKind::Instruction,
                    None,
                    "real-mode image out of real mode's reach".into(),
                )
            })?
        }
    };
    let flush = FlushRequest::new();
    let mut memory = M::create(&p.settings, host.stage2_caps(), flush.clone())?;
    memory.attach_shared(&p.settings, shared)?;
    if header.mode == GuestMode::Long64 {
        for (gpa, page) in guest_page_tables() {
            memory.write(gpa, &page)?;
        }
    }
    memory.write(header.load_gpa, &p.image)?;
    let vcpu = host
        .create(&start, memory.root_pointer(), flush.clone())
        .ok_or_else(|| {
            MemoryError::new(FaultKind::Instruction, None, "no free ASID/VPID".into())
        })?;
    let mut vm = Vm::new(id, p.settings.name.clone(), p.settings.expect, vcpu, memory);
    vm.flush = flush;
    Ok(vm)
}

/// A Linux guest: identity page tables, zero page, command line, kernel and initrd
/// in its RAM, the vCPU at the 64-bit entry with RSI = the zero page (boot.rst,
/// "64-bit BOOT PROTOCOL"), and its devices.
fn create_linux_vm<H: VcpuHost, M: GuestMemory>(
    host: &mut H,
    id: u64,
    p: &Prepared,
    boot: &LinuxBoot,
) -> Result<Vm<H::Vcpu, M>, MemoryError> {
    let start = StartState::Long64 {
        entry: boot.plan.entry,
        rsp: linux::layout::STACK_TOP,
        cr3: PML4_GPA,
    };
    let flush = FlushRequest::new();
    let mut memory = M::create(&p.settings, host.stage2_caps(), flush.clone())?;
    for (gpa, page) in guest_page_tables() {
        memory.write(gpa, &page)?;
    }
    for (gpa, bytes) in boot.writes(&p.image) {
        memory.write(gpa, bytes)?;
    }
    let mut vcpu = host
        .create(&start, memory.root_pointer(), flush)
        .ok_or_else(|| {
            MemoryError::new(FaultKind::Instruction, None, "no free ASID/VPID".into())
        })?;
    vcpu.set_reg(Reg::Rsi, linux::layout::ZERO_PAGE);
    // Interrupts off at entry (boot protocol); bit 1 of RFLAGS is always set.
    vcpu.set_reg(Reg::Rflags, 0x2);
    let mut vm = Vm::new(id, p.settings.name.clone(), p.settings.expect, vcpu, memory);
    vm.system = Some(FullSystem::default());
    Ok(vm)
}

/// The end of a guest whose set-up failed: it never ran, whatever its expectation.
fn not_started(e: MemoryError) -> GuestEnd {
    GuestEnd::NotStarted {
        kind: e.kind,
        detail: e.detail,
    }
}

struct Tally {
    guests: usize,
    failed: usize,
}

fn verdict(
    console: &mut dyn Console,
    tally: &mut Tally,
    name: &str,
    expect: &crate::outcome::Expectation,
    end: &GuestEnd,
) {
    tally.guests += 1;
    if expect.matches(end) {
        console.write_fmt_line(format_args!("[hv] guest {name}: PASS (ended: {end})"));
    } else {
        tally.failed += 1;
        console.write_fmt_line(format_args!(
            "[hv] guest {name}: FAIL (ended: {end}; expected {expect})"
        ));
    }
}

fn finish<H: VcpuHost, M: GuestMemory>(
    host: &mut H,
    mut vm: Vm<H::Vcpu, M>,
    end: GuestEnd,
    console: &mut dyn Console,
    tally: &mut Tally,
) {
    if vm.has_partial_line() {
        let name = vm.name.clone();
        vm.flush_line(&mut |l| console.write_fmt_line(format_args!("[guest {name}] {l}")));
    }
    verdict(console, tally, &vm.name, &vm.expect, &end);
    console.write_fmt_line(format_args!(
        "[hv] stage-2 report for {} ({} exits, {} faults served):",
        vm.name,
        vm.exits(),
        vm.memory.faults_handled()
    ));
    console.write_fmt_line(format_args!(
        "[hv]   exits by reason: {}",
        vm.exit_counts().summary()
    ));
    if let Some(system) = &vm.system {
        console.write_fmt_line(format_args!(
            "[hv]   interrupts injected: {}, HLTs that waited for one: {}",
            system.injected, system.halts
        ));
    }
    for line in vm.memory.report().lines() {
        console.write_fmt_line(format_args!("[hv] {line}"));
    }
    if let Some(line) = vm.snapshots.report() {
        console.write_fmt_line(format_args!("[hv] {}: {line}", vm.name));
    }
    if let Some(line) = vm.notices.report() {
        console.write_fmt_line(format_args!("[hv] {}: {line}", vm.name));
    }
    let Vm {
        vcpu,
        memory,
        snapshots,
        ..
    } = vm;
    host.destroy(vcpu);
    if let Some(saved) = snapshots.into_saved() {
        host.destroy(saved);
    }
    drop(memory);
}

fn announce(console: &mut dyn Console, id: u64, p: &Prepared) {
    let header = match &p.kind {
        PreparedKind::Image(h) => h,
        PreparedKind::Linux(boot) => {
            console.write_fmt_line(format_args!(
                "[hv] guest {} (id {id}): {} MiB RAM, Linux bzImage (boot protocol {}.{:02}), \
                 kernel at {:#x}, initrd {} KiB at {:#x}, entry {:#x}, expect {}",
                p.settings.name,
                p.settings.mem >> 20,
                boot.image.protocol >> 8,
                boot.image.protocol & 0xFF,
                boot.plan.kernel,
                boot.plan.initrd_size >> 10,
                boot.plan.initrd,
                boot.plan.entry,
                p.settings.expect
            ));
            return;
        }
    };
    console.write_fmt_line(format_args!(
        "[hv] guest {} (id {id}): {} MiB RAM, {}, entry {:#x}, expect {}",
        p.settings.name,
        p.settings.mem >> 20,
        header.mode.name(),
        header.entry_gpa,
        p.settings.expect
    ));
}

/// Runs every guest: admits them while vCPU slots (ASIDs) are free, keeping one spare
/// for clones; runs the queue round-robin (a guest runs until it ends or yields); then
/// checks that every frame came back.
fn run_all<H: VcpuHost, M: GuestMemory>(
    host: &mut H,
    settings: &HvSettings,
    guests: Vec<Prepared>,
    console: &mut dyn Console,
) -> RunStatus {
    console.write_fmt_line(format_args!("[hv] {}", host.describe()));
    let baseline = frame_usage().0;
    let mut tally = Tally {
        guests: 0,
        failed: 0,
    };
    let mut pending: VecDeque<Prepared> = guests.into();
    // Shared windows live until every guest is gone (dropped before the leak check).
    let mut shared = M::Shared::default();
    let mut queue: VecDeque<Vm<H::Vcpu, M>> = VecDeque::new();
    let mut next_id = 1;
    if settings.selftest == Some(SelfTest::Leak) {
        // Deliberately keep one frame to prove that the leak check notices.
        let _ = GlobalFrames.alloc_frame();
    }
    loop {
        while host.free_slots() > 1 || (queue.is_empty() && host.free_slots() > 0) {
            let Some(p) = pending.pop_front() else { break };
            let id = next_id;
            next_id += 1;
            match create_vm::<H, M>(host, id, &p, &mut shared) {
                Ok(vm) => {
                    announce(console, id, &p);
                    queue.push_back(vm);
                }
                Err(e) => verdict(
                    console,
                    &mut tally,
                    &p.settings.name,
                    &p.settings.expect,
                    &not_started(e),
                ),
            }
        }
        let Some(mut vm) = queue.pop_front() else {
            if let Some(p) = pending.pop_front() {
                let e = MemoryError::new(FaultKind::Instruction, None, "no free ASID/VPID".into());
                verdict(
                    console,
                    &mut tally,
                    &p.settings.name,
                    &p.settings.expect,
                    &not_started(e),
                );
                continue;
            }
            break;
        };
        loop {
            let name = vm.name.clone();
            let step = vm.step(settings.max_exits, settings.cpu_budget, &mut |l| {
                console.write_fmt_line(format_args!("[guest {name}] {l}"))
            });
            match step {
                Step::Continue => {}
                Step::Yield | Step::Preempted => {
                    queue.push_back(vm);
                    break;
                }
                Step::Clone => match clone_vm(host, &mut vm, next_id) {
                    Ok(child) => {
                        console.write_fmt_line(format_args!(
                            "[hv] guest {} cloned into {} (id {next_id})",
                            vm.name, child.name
                        ));
                        vm.vcpu.set_reg(Reg::Rax, next_id);
                        next_id += 1;
                        queue.push_back(child);
                    }
                    Err(Ok(status)) => vm.vcpu.set_reg(Reg::Rax, status as i64 as u64),
                    Err(Err(end)) => {
                        finish(host, vm, end, console, &mut tally);
                        break;
                    }
                },
                Step::Snapshot | Step::Reset => {
                    let end = if step == Step::Snapshot {
                        crate::reset::snapshot(host, &mut vm)
                    } else {
                        crate::reset::reset(host, &mut vm)
                    };
                    if let Some(end) = end {
                        finish(host, vm, end, console, &mut tally);
                        break;
                    }
                }
                Step::Ended(end) => {
                    finish(host, vm, end, console, &mut tally);
                    break;
                }
            }
        }
    }
    drop(shared);
    let (in_use, _) = frame_usage();
    let leaked = in_use.saturating_sub(baseline);
    console.write_fmt_line(format_args!(
        "[hv] frame leak check: {in_use} frames in use after teardown, {baseline} before the guests: {}",
        if in_use == baseline { "OK" } else { "LEAK" }
    ));
    if in_use != baseline {
        console.write_fmt_line(format_args!("HV: FRAME LEAK ({leaked} frames)"));
        RunStatus::Leak
    } else if tally.failed > 0 {
        console.write_fmt_line(format_args!("HV: {} GUEST(S) FAILED", tally.failed));
        RunStatus::GuestFailed
    } else {
        console.write_fmt_line(format_args!("HV: ALL {} GUESTS PASSED", tally.guests));
        RunStatus::AllPassed
    }
}

/// Clones `parent`: the child, or the status for the parent's RAX, or the parent's
/// end (bookkeeping or host memory exhausted, see [`crate::vm::status_or_end`]).
fn clone_vm<H: VcpuHost, M: GuestMemory>(
    host: &mut H,
    parent: &mut Vm<H::Vcpu, M>,
    id: u64,
) -> Result<Vm<H::Vcpu, M>, Result<HypercallStatus, GuestEnd>> {
    let flush = FlushRequest::new();
    let memory = parent.memory.try_clone(flush.clone()).map_err(|e| {
        if parent.notices.admit(&parent.name) {
            log::warn!("guest {}: clone refused: {}", parent.name, e.detail);
        }
        match crate::vm::status_or_end(e) {
            Ok(HypercallStatus::NoMemory) => Ok(HypercallStatus::NoMemory),
            Ok(_) => Ok(HypercallStatus::Unsupported),
            Err(end) => Err(end),
        }
    })?;
    let mut vcpu = host
        .fork(&parent.vcpu, memory.root_pointer(), flush.clone())
        .ok_or(Ok(HypercallStatus::Unsupported))?;
    vcpu.set_reg(Reg::Rax, 0);
    let name = format!("{}.child{id}", parent.name);
    let mut child = Vm::new(id, name, parent.expect, vcpu, memory);
    child.msrs = parent.msrs.clone();
    child.flush = flush;
    Ok(child)
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec;

    use crate::abi::{
        HEADER_SIZE, IMAGE_FLAG_REAL_MODE, IMAGE_MAGIC, IMAGE_VERSION, hypercall, seal,
    };

    use super::*;
    use crate::testing::{FakeHost, FakeMemory, RecordingConsole, ScriptStep};
    use crate::vcpu::VmExit;

    fn image(load: u64) -> Vec<u8> {
        image_with_flags(load, 0)
    }

    fn image_with_flags(load: u64, flags: u32) -> Vec<u8> {
        let mut img = vec![0u8; 256];
        img[44..48].copy_from_slice(&flags.to_le_bytes());
        img[..8].copy_from_slice(&IMAGE_MAGIC);
        img[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
        img[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        img[16..24].copy_from_slice(&load.to_le_bytes());
        img[24..32].copy_from_slice(&(load + 64).to_le_bytes());
        img[32..40].copy_from_slice(&256u64.to_le_bytes());
        seal(&mut img).unwrap();
        img
    }

    fn module(cmdline: &str) -> BootModule {
        BootModule {
            cmdline: cmdline.to_string(),
            image: image(0x10_0000),
        }
    }

    fn prepared(cmdlines: &[&str]) -> Vec<Prepared> {
        cmdlines
            .iter()
            .map(|c| prepare(module(c)).unwrap())
            .collect()
    }

    fn exit(code: u64) -> ScriptStep {
        (
            vec![(Reg::Rax, hypercall::EXIT), (Reg::Rdi, code)],
            VmExit::Hypercall,
        )
    }

    fn call(nr: u64) -> ScriptStep {
        (vec![(Reg::Rax, nr)], VmExit::Hypercall)
    }

    fn out(byte: u8) -> ScriptStep {
        (
            vec![(Reg::Rax, u64::from(byte))],
            VmExit::Io {
                port: 0x3f8,
                size: 1,
                write: true,
                string: false,
            },
        )
    }

    fn run(mut host: FakeHost, guests: &[&str]) -> (RunStatus, Vec<String>) {
        run_on(&mut host, guests)
    }

    fn run_on(host: &mut FakeHost, guests: &[&str]) -> (RunStatus, Vec<String>) {
        let mut console = RecordingConsole::default();
        let status = run_all::<FakeHost, FakeMemory>(
            host,
            &HvSettings::default(),
            prepared(guests),
            &mut console,
        );
        (status, console.lines)
    }

    fn index_of(lines: &[String], needle: &str) -> usize {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {lines:#?}"))
    }

    #[test]
    fn guests_interleave_and_a_faulting_one_ends_alone() {
        let host = FakeHost::new(
            16,
            vec![
                vec![out(b'a'), out(b'\n'), call(hypercall::YIELD), exit(0)],
                vec![(
                    vec![],
                    crate::testing::s2_fault(0x9000_0000, ept::format::Access::READ),
                )],
            ],
        );
        let (status, lines) = run(host, &["a.bin", "b.bin expect=fault:unmapped@0x90000000"]);
        assert_eq!(status, RunStatus::AllPassed);
        let a_out = index_of(&lines, "[guest a] a");
        let b_end = index_of(
            &lines,
            "[hv] guest b: PASS (ended: fault:unmapped@0x90000000",
        );
        let a_end = index_of(&lines, "[hv] guest a: PASS (ended: exit code 0)");
        assert!(
            a_out < b_end && b_end < a_end,
            "a yields to b before it ends"
        );
        assert_eq!(lines.last().unwrap(), "HV: ALL 2 GUESTS PASSED");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("frame leak check") && l.ends_with("OK"))
        );
    }

    #[test]
    fn an_unexpected_end_fails_the_run() {
        let host = FakeHost::new(16, vec![vec![exit(3)], vec![exit(0)]]);
        let (status, lines) = run(host, &["a.bin", "b.bin"]);
        assert_eq!(status, RunStatus::GuestFailed);
        index_of(
            &lines,
            "[hv] guest a: FAIL (ended: exit code 3; expected ok)",
        );
        index_of(&lines, "[hv] guest b: PASS");
        assert_eq!(lines.last().unwrap(), "HV: 1 GUEST(S) FAILED");
    }

    #[test]
    fn guests_wait_for_free_slots() {
        let host = FakeHost::new(3, vec![vec![exit(0)]; 5]);
        let (status, lines) = run(host, &["a.bin", "b.bin", "c.bin", "d.bin", "e.bin"]);
        assert_eq!(status, RunStatus::AllPassed);
        assert_eq!(lines.last().unwrap(), "HV: ALL 5 GUESTS PASSED");
        // One slot stays free for clones while others run: a, b admitted first.
        assert!(index_of(&lines, "[hv] guest a: PASS") < index_of(&lines, "guest c (id 3)"));
    }

    #[test]
    fn clone_creates_a_child_guest() {
        let host = FakeHost::new(
            16,
            vec![vec![call(hypercall::CLONE), exit(0)], vec![exit(0)]],
        );
        let (status, lines) = run(host, &["p.bin"]);
        assert_eq!(status, RunStatus::AllPassed);
        index_of(&lines, "[hv] guest p cloned into p.child2 (id 2)");
        index_of(&lines, "[hv] guest p.child2: PASS");
        assert_eq!(lines.last().unwrap(), "HV: ALL 2 GUESTS PASSED");
    }

    #[test]
    fn clone_returns_ids_and_errors_in_rax() {
        let mut host = FakeHost::new(
            16,
            vec![vec![call(hypercall::CLONE), exit(0)], vec![exit(0)]],
        );
        let (status, _) = run_on(&mut host, &["p.bin"]);
        assert_eq!(status, RunStatus::AllPassed);
        // The parent resumes with the child's id, the child starts with 0.
        let parent = host.finished.iter().find(|h| h.len() == 2).unwrap();
        assert_eq!(parent[1], 2);
        let child = host.finished.iter().find(|h| h.len() == 1).unwrap();
        assert_eq!(child[0], 0);

        // One slot: the parent holds it, so the clone fails with an error in RAX.
        let mut host = FakeHost::new(1, vec![vec![call(hypercall::CLONE), exit(0)]]);
        let (status, lines) = run_on(&mut host, &["p.bin"]);
        assert_eq!(status, RunStatus::AllPassed);
        assert!(!lines.iter().any(|l| l.contains("cloned into")));
        assert_eq!(
            host.finished[0][1] as i64,
            HypercallStatus::Unsupported as i64
        );
    }

    #[test]
    fn bad_modules_are_refused_before_anything_runs() {
        let mut console = RecordingConsole::default();
        let mut bad = module("x.bin");
        bad.image[70] ^= 1;
        let status = start(
            &HvSettings::default(),
            vec![module("a.bin"), bad],
            &mut console,
        );
        assert_eq!(status, RunStatus::BadConfig);
        index_of(
            &console.lines,
            "module `x.bin` REFUSED: image `x.bin`: checksum mismatch",
        );
        assert_eq!(console.lines.last().unwrap(), "HV: CONFIGURATION REFUSED");

        let mut console = RecordingConsole::default();
        assert_eq!(
            start(&HvSettings::default(), Vec::new(), &mut console),
            RunStatus::BadConfig
        );
        index_of(&console.lines, "no guest modules given");
    }

    #[test]
    fn images_must_fit_in_ram() {
        let e = prepare(BootModule {
            cmdline: "a.bin".into(),
            image: image(0x40_0000),
        })
        .err()
        .unwrap();
        assert!(e.contains("outside RAM"), "{e}");
        let e = prepare(BootModule {
            cmdline: "a.bin".into(),
            image: image(0x1000),
        })
        .err()
        .unwrap();
        assert!(e.contains("outside RAM"), "{e}");
        assert!(
            prepare(BootModule {
                cmdline: "a.bin mem=3M".into(),
                image: image(0x10_0000)
            })
            .is_err()
        );
    }

    fn real_module(load: u64) -> BootModule {
        BootModule {
            cmdline: "r.bin".into(),
            image: image_with_flags(load, IMAGE_FLAG_REAL_MODE),
        }
    }

    #[test]
    fn real_mode_guest_starts_in_real_mode_without_page_tables() {
        let p = prepare(real_module(0x1_0000)).unwrap();
        assert!(matches!(&p.kind, PreparedKind::Image(h) if h.mode == GuestMode::Real16));
        let mut host = FakeHost::new(4, vec![vec![exit(0)]]);
        let vm = create_vm::<FakeHost, FakeMemory>(&mut host, 1, &p, &mut ())
            .ok()
            .unwrap();
        assert_eq!(
            host.starts,
            vec![StartState::Real16 {
                code_segment: 0x1000,
                ip: 0x40,
                stack_segment: 0,
                sp: crate::layout::REAL_MODE_STACK_TOP,
            }]
        );
        // The image is there, the long-mode page tables are not.
        assert_eq!(vm.memory.bytes.get(&0x1_0000), Some(&b'S'));
        assert!(!vm.memory.bytes.contains_key(&PML4_GPA));
        // A long-mode guest gets them.
        let long = prepare(module("l.bin")).unwrap();
        let vm = create_vm::<FakeHost, FakeMemory>(&mut host, 2, &long, &mut ())
            .ok()
            .unwrap();
        assert!(vm.memory.bytes.contains_key(&PML4_GPA));
        assert!(matches!(
            host.starts[1],
            StartState::Long64 {
                entry: 0x10_0040,
                ..
            }
        ));
    }

    #[test]
    fn real_mode_guest_runs_and_passes() {
        let host = FakeHost::new(4, vec![vec![out(b'r'), out(b'\n'), exit(0)]]);
        let mut console = RecordingConsole::default();
        let mut host = host;
        let status = run_all::<FakeHost, FakeMemory>(
            &mut host,
            &HvSettings::default(),
            vec![prepare(real_module(0x2_0000)).unwrap()],
            &mut console,
        );
        assert_eq!(status, RunStatus::AllPassed);
        index_of(&console.lines, "16-bit real mode, entry 0x20040");
        index_of(&console.lines, "[guest r] r");
    }

    #[test]
    fn a_guest_that_never_started_meets_no_expectation() {
        // No vCPU slot at all: the guest cannot be created. Even though it expects
        // the very kind of fault its set-up failed with, it fails.
        let (status, lines) = run(
            FakeHost::new(0, vec![]),
            &["a.bin expect=fault:instruction"],
        );
        assert_eq!(status, RunStatus::GuestFailed);
        let line = &lines[index_of(&lines, "guest a: FAIL")];
        assert!(
            line.contains("never started (instruction): no free ASID/VPID"),
            "{line}"
        );
    }

    #[test]
    fn real_mode_guest_is_refused_where_the_host_cannot_run_it() {
        let mut host = FakeHost::new(4, vec![]);
        host.real_mode = false;
        let mut console = RecordingConsole::default();
        let status = run_all::<FakeHost, FakeMemory>(
            &mut host,
            &HvSettings::default(),
            vec![prepare(real_module(0x1_0000)).unwrap()],
            &mut console,
        );
        assert_eq!(status, RunStatus::GuestFailed);
        let line = &console.lines[index_of(&console.lines, "guest r: FAIL")];
        assert!(
            line.contains("real-mode guest refused: the fake host has no real mode"),
            "{line}"
        );
        assert!(host.starts.is_empty(), "no vCPU was created");
    }

    #[test]
    fn real_mode_images_load_between_64k_and_640k() {
        let e = prepare(real_module(0x8000)).err().unwrap();
        assert!(e.contains("outside RAM 0x10000.."), "{e}");
        let e = prepare(real_module(0x10_0000)).err().unwrap();
        assert!(e.contains("out of real mode's reach"), "{e}");
        // Long-mode images still start at 1 MiB.
        let e = prepare(BootModule {
            cmdline: "a.bin".into(),
            image: image(0x1_0000),
        })
        .err()
        .unwrap();
        assert!(e.contains("outside RAM 0x100000.."), "{e}");
    }
}
