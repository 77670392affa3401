//! The host GDT (64-bit code and data segments and a TSS) and the interrupt stack
//! table: every exception runs on a known-good stack (Intel SDM vol. 3 6.14.5), so even
//! a stack overflow in the host gets reported.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (1-based in the IDT entry, 0-based in the TSS) for ordinary exceptions.
pub const IST_EXCEPTION: u16 = 1;
/// IST slot for double faults.
pub const IST_DOUBLE_FAULT: u16 = 2;
/// IST slot for NMI and machine checks.
pub const IST_NMI: u16 = 3;
/// IST slot for device interrupts (the scheduling timer).
pub const IST_IRQ: u16 = 4;

const IST_STACK_SIZE: usize = 32 * 1024;

/// One interrupt stack, 16-byte aligned.
#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [IstStack; 4] = [const { IstStack([0; IST_STACK_SIZE]) }; 4];

struct Tables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static TABLES: Once<Tables> = Once::new();

/// The host code segment selector (for the IDT gates).
pub fn code_selector() -> SegmentSelector {
    TABLES.get().map_or(SegmentSelector(0x08), |t| t.code)
}

/// Builds and loads the GDT and TSS, reloading every segment register.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let stacks = &raw const IST_STACKS;
        for (slot, stack_index) in [IST_EXCEPTION, IST_DOUBLE_FAULT, IST_NMI, IST_IRQ]
            .into_iter()
            .enumerate()
        {
            let base = stacks as u64 + (slot * IST_STACK_SIZE) as u64;
            tss.interrupt_stack_table[usize::from(stack_index - 1)] =
                VirtAddr::new(base + IST_STACK_SIZE as u64);
        }
        tss
    });
    let tables = TABLES.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        Tables {
            gdt,
            code,
            data,
            tss,
        }
    });
    tables.gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose code and data descriptors
    // are the flat 64-bit kernel ones the boot code used.
    unsafe { CS::set_reg(tables.code) };
    // SAFETY: as above, a flat data segment.
    unsafe { DS::set_reg(tables.data) };
    // SAFETY: as above.
    unsafe { ES::set_reg(tables.data) };
    // SAFETY: as above.
    unsafe { SS::set_reg(tables.data) };
    // SAFETY: the TSS descriptor points at a 'static TSS and is not busy yet.
    unsafe { load_tss(tables.tss) };
}
