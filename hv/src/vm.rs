//! One guest: its vCPU, its memory, its console line, and the handling of its exits.

use alloc::format;
use alloc::string::String;

use ept::format::Access;
use guest_images::abi::{HypercallStatus, access, hypercall};

use crate::memory::{GuestMemory, MemoryError};
use crate::outcome::{Expectation, FaultKind, GuestEnd};
use crate::vcpu::{Reg, Vcpu, VmExit};

/// COM1 data port and the registers around it (16550 UART).
const SERIAL_BASE: u16 = 0x3f8;
/// Line status register: transmitter empty and idle (bits 5 and 6).
const LSR_VALUE: u64 = 0x60;
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
    /// Clone this guest (CLONE hypercall): the loop creates the child and sets RAX in
    /// both.
    Clone,
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
    line: String,
    lines: u32,
    exits: u64,
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
            line: String::new(),
            lines: 0,
            exits: 0,
        }
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

    /// Runs the guest to its next exit and handles it. `print` receives each complete
    /// line the guest writes to its serial port.
    pub fn step(&mut self, max_exits: u64, print: &mut dyn FnMut(&str)) -> Step {
        if self.exits >= max_exits {
            return Step::Ended(GuestEnd::ExitLimit(self.exits));
        }
        let exit = self.vcpu.run();
        self.exits += 1;
        log::trace!(
            "guest {}: exit {exit:?} at rip {:#x}",
            self.name,
            self.vcpu.reg(Reg::Rip)
        );
        match exit {
            VmExit::Stage2Fault(fault) => match self.memory.handle_fault(fault) {
                Ok(()) => {
                    log::debug!("guest {}: served {fault:?}", self.name);
                    Step::Continue
                }
                Err(e) => Step::Ended(end_of(e)),
            },
            VmExit::Io {
                port,
                size,
                write,
                string,
            } => self.io(port, size, write, string, print),
            VmExit::Hypercall => self.hypercall(),
            VmExit::Cpuid => {
                self.cpuid();
                Step::Continue
            }
            VmExit::Msr { write } => {
                // Reads give 0 and writes are ignored: the guests need no MSRs.
                let msr = self.vcpu.reg(Reg::Rcx) as u32;
                log::debug!(
                    "guest {}: {} MSR {msr:#x} ignored",
                    self.name,
                    if write { "WRMSR" } else { "RDMSR" }
                );
                if !write {
                    self.vcpu.set_reg(Reg::Rax, 0);
                    self.vcpu.set_reg(Reg::Rdx, 0);
                }
                self.vcpu.skip_instruction();
                Step::Continue
            }
            VmExit::Hlt => Step::Ended(GuestEnd::Halted),
            VmExit::Shutdown => Step::Ended(fault(
                FaultKind::Shutdown,
                None,
                format!(
                    "triple fault (shutdown) at rip {:#x}",
                    self.vcpu.reg(Reg::Rip)
                ),
            )),
            VmExit::Forbidden { what } => Step::Ended(fault(
                FaultKind::Instruction,
                None,
                format!("{what} is not allowed in a guest"),
            )),
            VmExit::InvalidState { code } => Step::Ended(fault(
                FaultKind::Instruction,
                None,
                format!("the CPU refused the guest state (exit code {code:#x})"),
            )),
            VmExit::Unknown { code, info1, info2 } => Step::Ended(fault(
                FaultKind::Instruction,
                None,
                format!("unhandled exit {code:#x} (info {info1:#x}, {info2:#x})"),
            )),
        }
    }

    fn io(
        &mut self,
        port: u16,
        size: u8,
        write: bool,
        string: bool,
        print: &mut dyn FnMut(&str),
    ) -> Step {
        let serial = (SERIAL_BASE..SERIAL_BASE + 8).contains(&port);
        if !serial || string {
            return Step::Ended(fault(
                FaultKind::Io,
                None,
                format!(
                    "{}{} of {size} byte(s) to port {port:#x} refused",
                    if string { "string " } else { "" },
                    if write { "OUT" } else { "IN" }
                ),
            ));
        }
        if write {
            if port == SERIAL_BASE {
                let byte = self.vcpu.reg(Reg::Rax) as u8;
                self.out_byte(byte, print);
            }
        } else {
            let value = if port == SERIAL_BASE + 5 {
                LSR_VALUE
            } else {
                0
            };
            let mask = match size {
                1 => 0xFF,
                2 => 0xFFFF,
                _ => 0xFFFF_FFFF,
            };
            let rax = self.vcpu.reg(Reg::Rax);
            // A 32-bit IN zero-extends into RAX; 8- and 16-bit ones merge.
            let new = if size == 4 {
                value
            } else {
                (rax & !mask) | (value & mask)
            };
            self.vcpu.set_reg(Reg::Rax, new);
        }
        self.vcpu.skip_instruction();
        Step::Continue
    }

    fn cpuid(&mut self) {
        let leaf = self.vcpu.reg(Reg::Rax) as u32;
        let sub = self.vcpu.reg(Reg::Rcx) as u32;
        let mut r = core::arch::x86_64::__cpuid_count(leaf, sub);
        match leaf {
            // Leaf 1 ECX: clear VMX (bit 5), set "hypervisor present" (bit 31).
            1 => r.ecx = (r.ecx & !(1 << 5)) | (1 << 31),
            // Leaf 8000_0001 ECX: clear SVM (bit 2): no nested virtualization.
            0x8000_0001 => r.ecx &= !(1 << 2),
            _ => {}
        }
        self.vcpu.set_reg(Reg::Rax, u64::from(r.eax));
        self.vcpu.set_reg(Reg::Rbx, u64::from(r.ebx));
        self.vcpu.set_reg(Reg::Rcx, u64::from(r.ecx));
        self.vcpu.set_reg(Reg::Rdx, u64::from(r.edx));
        self.vcpu.skip_instruction();
    }

    fn hypercall(&mut self) -> Step {
        let number = self.vcpu.reg(Reg::Rax);
        let a0 = self.vcpu.reg(Reg::Rdi);
        let a1 = self.vcpu.reg(Reg::Rsi);
        let a2 = self.vcpu.reg(Reg::Rdx);
        log::debug!(
            "guest {}: hypercall {number} ({a0:#x}, {a1:#x}, {a2:#x})",
            self.name
        );
        self.vcpu.skip_instruction();
        let result: Result<u64, HypercallStatus> = match number {
            hypercall::EXIT => return Step::Ended(GuestEnd::Exited(a0)),
            hypercall::YIELD => return Step::Yield,
            hypercall::CLONE => return Step::Clone,
            hypercall::LEAF_SIZE => Ok(self.memory.leaf_size(a0).unwrap_or(0)),
            hypercall::PROTECT => match rights(a2) {
                Some(rights) => self
                    .memory
                    .protect(a0, a1, rights)
                    .map(|()| 0)
                    .map_err(status_of),
                None => Err(HypercallStatus::InvalidArgument),
            },
            hypercall::UNMAP => self.memory.unmap(a0, a1).map(|()| 0).map_err(status_of),
            hypercall::HOST_READ => {
                let mut b = [0u8; 8];
                self.memory
                    .read(a0, &mut b)
                    .map(|()| u64::from_le_bytes(b))
                    .map_err(status_of)
            }
            _ => {
                return Step::Ended(fault(
                    FaultKind::Hypercall,
                    None,
                    format!("unknown hypercall {number}"),
                ));
            }
        };
        let rax = match result {
            Ok(v) => v,
            Err(s) => s as i64 as u64,
        };
        self.vcpu.set_reg(Reg::Rax, rax);
        Step::Continue
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

fn status_of(e: MemoryError) -> HypercallStatus {
    match e.kind {
        FaultKind::Quota => HypercallStatus::NoMemory,
        FaultKind::Unmapped => HypercallStatus::NotMapped,
        _ => HypercallStatus::InvalidArgument,
    }
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
