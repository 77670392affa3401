//! Handling one exit of a guest: the dispatch on [`VmExit`] in [`Vm::step`], and the
//! handlers for port I/O (the COM1 console of the tiny guests), CPUID, MSRs,
//! hypercalls, and instruction lengths the hardware did not report.

use alloc::format;
use alloc::string::String;

use super::{Step, Vm, end_of, fault, rights, status_or_end};
use crate::abi::{HypercallStatus, hypercall};
use crate::cpu::decode::{self, Op};
use crate::cpu::msr;
use crate::cpu::{cpuid, vector};
use crate::memory::{GuestMemory, MemoryError};
use crate::outcome::{FaultKind, GuestEnd};
use crate::system::SystemStep;
use crate::vcpu::{ArchReg, Reg, Vcpu, VmExit};

/// COM1 data port and the registers around it (16550 UART).
const SERIAL_BASE: u16 = 0x3f8;
/// Line status register: transmitter empty and idle (bits 5 and 6).
const LSR_VALUE: u64 = 0x60;

impl<V: Vcpu, M: GuestMemory> Vm<V, M> {
    /// Runs the guest to its next exit and handles it. `print` receives each complete
    /// line the guest writes to its serial port. A guest ends after `max_exits` exits
    /// or `cpu_budget` timer ticks of running.
    pub fn step(&mut self, max_exits: u64, cpu_budget: u64, print: &mut dyn FnMut(&str)) -> Step {
        if self.exits >= max_exits {
            return Step::Ended(GuestEnd::ExitLimit(self.exits));
        }
        if let Some(system) = &mut self.system {
            match system.before_entry(&mut self.vcpu) {
                SystemStep::Wait => return Step::Yield,
                SystemStep::End(end) => return Step::Ended(end),
                _ => {}
            }
        }
        let exit = self.vcpu.run();
        self.exits += 1;
        self.exit_counts.count(&exit);
        // An injected exception explains only a triple fault that follows at once.
        let injected = self.injected.take();
        log::trace!(
            "guest {}: exit {exit:?} at rip {:#x}",
            self.name,
            self.vcpu.reg(Reg::Rip)
        );
        if let Err(end) = self.find_instruction_length(&exit) {
            return Step::Ended(end);
        }
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
            } => match &mut self.system {
                Some(system) => match system.io(&mut self.vcpu, port, size, write, string) {
                    SystemStep::Serial(byte) => {
                        self.out_byte(byte, print);
                        Step::Continue
                    }
                    SystemStep::End(end) => Step::Ended(end),
                    _ => Step::Continue,
                },
                None => self.io(port, size, write, string, print),
            },
            // The next entry delivers the interrupt the window was opened for.
            VmExit::InterruptWindow => Step::Continue,
            VmExit::Hypercall => self.hypercall(),
            VmExit::Interrupt => {
                self.ticks += 1;
                if self.ticks >= cpu_budget {
                    return Step::Ended(fault(
                        FaultKind::Timeout,
                        None,
                        format!("still running after its CPU budget of {cpu_budget} timer ticks"),
                    ));
                }
                Step::Preempted
            }
            VmExit::Cpuid => {
                self.cpuid();
                Step::Continue
            }
            VmExit::Msr { write } => {
                self.msr(write);
                Step::Continue
            }
            VmExit::Hlt => match &mut self.system {
                Some(system) => match system.hlt(&mut self.vcpu) {
                    SystemStep::End(end) => Step::Ended(end),
                    _ => Step::Continue,
                },
                None => Step::Ended(GuestEnd::Halted),
            },
            VmExit::Wbinvd => {
                // Guest memory is write-back and coherent: nothing to write back.
                self.vcpu.skip_instruction();
                Step::Continue
            }
            VmExit::Shutdown => Step::Ended(fault(
                FaultKind::Shutdown,
                None,
                format!(
                    "triple fault (shutdown) at rip {:#x}{}",
                    self.vcpu.reg(Reg::Rip),
                    injected
                        .as_deref()
                        .map(|what| format!(" after {what}"))
                        .unwrap_or_default()
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
                Some(u64::from(port)),
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

    /// For an exit whose instruction must be skipped but whose length the hardware did
    /// not report (SVM without NRIPS), decodes it from guest memory and checks that it
    /// is the instruction that exited; a guest whose bytes do not decode so ends.
    fn find_instruction_length(&mut self, exit: &VmExit) -> Result<(), GuestEnd> {
        let expected: &[Op] = match exit {
            VmExit::Hypercall => &[Op::Vmmcall, Op::Vmcall],
            VmExit::Cpuid => &[Op::Cpuid],
            VmExit::Msr { write: false } => &[Op::Rdmsr],
            VmExit::Msr { write: true } => &[Op::Wrmsr],
            VmExit::Wbinvd => &[Op::Wbinvd],
            // A HLT that resumes (once interrupts wake it) needs its length too:
            // otherwise the wake-up interrupt returns onto the HLT and Linux's idle
            // loop never sees its work (seen: soft lockups in idle).
            VmExit::Hlt => &[Op::Hlt],
            _ => return Ok(()),
        };
        if self.vcpu.instruction_length_known() {
            return Ok(());
        }
        let refuse = |why: String| {
            fault(
                FaultKind::Instruction,
                None,
                format!("instruction refused: its length is unknown and {why}"),
            )
        };
        let cs = self.vcpu.code_segment();
        let rip = self.vcpu.reg(Reg::Rip);
        let paging = decode::Paging {
            cr0: self.vcpu.arch(ArchReg::Cr0),
            cr3: self.vcpu.arch(ArchReg::Cr3),
            cr4: self.vcpu.arch(ArchReg::Cr4),
            efer: self.vcpu.arch(ArchReg::Efer),
        };
        let mut bytes = [0u8; decode::MAX_LENGTH];
        let memory = &mut self.memory;
        let mut read = |gpa: u64, buf: &mut [u8]| memory.read(gpa, buf).is_ok();
        let n = decode::fetch(cs, rip, paging, &mut read, &mut bytes)
            .map_err(|e| refuse(format!("its bytes at rip {rip:#x} cannot be read: {e}")))?;
        let d = decode::decode(&bytes[..n], cs)
            .map_err(|e| refuse(format!("the bytes at rip {rip:#x} do not decode: {e}")))?;
        if d.op == Op::Invd {
            // QEMU 7.2 reports INVD as a WBINVD exit: what runs is what counts.
            return Err(fault(
                FaultKind::Instruction,
                None,
                format!("INVD is not allowed in a guest (it exited as {exit:?})"),
            ));
        }
        if !expected.contains(&d.op) {
            return Err(refuse(format!(
                "the bytes at rip {rip:#x} are {:?}, not the {exit:?} that exited",
                d.op
            )));
        }
        self.vcpu.set_instruction_length(d.len);
        Ok(())
    }

    fn cpuid(&mut self) {
        let leaf = self.vcpu.reg(Reg::Rax) as u32;
        let sub = self.vcpu.reg(Reg::Rcx) as u32;
        let policy = cpuid::Policy {
            pkru: crate::switch::pkru_switched(),
            guest_cr4: self.vcpu.arch(ArchReg::Cr4),
        };
        let [a, b, c, d] = cpuid::leaf(leaf, sub, policy, |l, s| {
            let r = core::arch::x86_64::__cpuid_count(l, s);
            [r.eax, r.ebx, r.ecx, r.edx]
        });
        self.vcpu.set_reg(Reg::Rax, u64::from(a));
        self.vcpu.set_reg(Reg::Rbx, u64::from(b));
        self.vcpu.set_reg(Reg::Rcx, u64::from(c));
        self.vcpu.set_reg(Reg::Rdx, u64::from(d));
        self.vcpu.skip_instruction();
    }

    /// RDMSR/WRMSR through the MSR table ([`crate::cpu::msr`]); #GP(0) for an unknown
    /// MSR or a value the MSR refuses, as the hardware would.
    fn msr(&mut self, write: bool) {
        let number = self.vcpu.reg(Reg::Rcx) as u32;
        let low = |r: u64| r & 0xFFFF_FFFF;
        let result = if write {
            let value = (self.vcpu.reg(Reg::Rdx) << 32) | low(self.vcpu.reg(Reg::Rax));
            msr::write(&mut self.vcpu, &mut self.msrs, number, value)
        } else {
            msr::read(&self.vcpu, &self.msrs, number).map(|value| {
                self.vcpu.set_reg(Reg::Rax, low(value));
                self.vcpu.set_reg(Reg::Rdx, value >> 32);
            })
        };
        match result {
            Ok(()) => self.vcpu.skip_instruction(),
            Err(e) => {
                let what = format!(
                    "#GP injected for {} of MSR {number:#x} ({e})",
                    if write { "WRMSR" } else { "RDMSR" }
                );
                log::debug!("guest {}: {what}", self.name);
                self.vcpu.inject_exception(vector::GP, Some(0));
                self.injected = Some(what);
            }
        }
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
        let result: Result<u64, MemoryError> = match number {
            hypercall::EXIT => return Step::Ended(GuestEnd::Exited(a0)),
            hypercall::YIELD => return Step::Yield,
            hypercall::CLONE => return Step::Clone,
            hypercall::SNAPSHOT => return Step::Snapshot,
            hypercall::RESET => return Step::Reset,
            hypercall::LEAF_SIZE => Ok(self.memory.leaf_size(a0).unwrap_or(0)),
            hypercall::PROTECT => match rights(a2) {
                Some(rights) => self.memory.protect(a0, a1, rights).map(|()| 0),
                None => return self.refuse(HypercallStatus::InvalidArgument),
            },
            hypercall::UNMAP => self.memory.unmap(a0, a1).map(|()| 0),
            hypercall::BALLOON => match self.memory.balloon(a0, a1) {
                Ok((freed, now)) => {
                    if self.notices.admit(&self.name) {
                        log::info!(
                            "guest {}: balloon gave back {freed} frames of [{a0:#x}, {:#x}): {now} RAM frames now",
                            self.name,
                            a0.wrapping_add(a1)
                        );
                    }
                    Ok(freed)
                }
                Err(e) => Err(e),
            },
            hypercall::HOST_READ => {
                let mut b = [0u8; 8];
                self.memory.read(a0, &mut b).map(|()| u64::from_le_bytes(b))
            }
            _ => {
                return Step::Ended(fault(
                    FaultKind::Hypercall,
                    None,
                    format!("unknown hypercall {number}"),
                ));
            }
        };
        match result.map_err(status_or_end) {
            Ok(v) => {
                self.vcpu.set_reg(Reg::Rax, v);
                Step::Continue
            }
            Err(Ok(status)) => self.refuse(status),
            Err(Err(end)) => Step::Ended(end),
        }
    }

    /// Returns `status` to the guest in RAX.
    fn refuse(&mut self, status: HypercallStatus) -> Step {
        self.vcpu.set_reg(Reg::Rax, status as i64 as u64);
        Step::Continue
    }
}
