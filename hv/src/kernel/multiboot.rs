//! Reading the multiboot information (Multiboot specification 0.6.96, section 3.3):
//! command line, modules and memory map.
//!
//! The reader first only measures where the boot information and modules lie (so the
//! heap can be placed above them), then copies what the hypervisor keeps onto the heap.

use alloc::string::String;
use alloc::vec::Vec;

/// The magic value a multiboot loader leaves in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// `flags` bits of the information structure.
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
/// Memory-map entry type for usable RAM.
const MMAP_AVAILABLE: u32 = 1;
/// Most memory-map entries and modules read.
const MAX_ENTRIES: usize = 64;

/// Reads a `T` at physical address `addr`.
///
/// # Safety
/// `addr..addr + size_of::<T>()` must be readable (identity-mapped boot memory).
unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: guaranteed by the caller; unaligned reads are allowed.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Length of the NUL-terminated string at `addr` (at most 4096).
///
/// # Safety
/// The string must be readable up to its terminator or 4096 bytes.
unsafe fn strlen(addr: u64) -> usize {
    // SAFETY: each byte read lies inside the string, per the caller.
    (0..4096)
        .find(|&i| unsafe { read::<u8>(addr + i as u64) } == 0)
        .unwrap_or(4096)
}

/// A boot module before it is copied.
#[derive(Clone, Copy, Default)]
pub struct RawModule {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Address of its command line (0 if none).
    pub cmdline: u64,
}

/// What the boot information says, without copies.
pub struct RawBootInfo {
    /// RAM ranges `[start, end)` from the memory map.
    pub ram: [(u64, u64); MAX_ENTRIES],
    /// Number of valid entries in `ram`.
    pub ram_count: usize,
    /// Modules.
    pub modules: [RawModule; MAX_ENTRIES],
    /// Number of valid modules.
    pub module_count: usize,
    /// Address of the kernel command line (0 if none).
    pub cmdline: u64,
    /// End of the highest byte the boot information or a module occupies.
    pub high_water: u64,
}

/// A module copied onto the heap.
pub struct Module {
    /// Its command line (file name and settings).
    pub cmdline: String,
    /// Its contents.
    pub data: Vec<u8>,
}

impl RawBootInfo {
    /// Reads the information structure at `info`.
    ///
    /// # Safety
    /// `info` must be the address a multiboot loader passed in EBX, with everything it
    /// points to readable (identity-mapped below 4 GiB).
    pub unsafe fn read(info: u64) -> Self {
        let mut this = Self {
            ram: [(0, 0); MAX_ENTRIES],
            ram_count: 0,
            modules: [RawModule::default(); MAX_ENTRIES],
            module_count: 0,
            cmdline: 0,
            high_water: info + 120,
        };
        // SAFETY: the information structure is readable per the caller.
        let flags: u32 = unsafe { read(info) };
        if flags & FLAG_CMDLINE != 0 {
            // SAFETY: as above (offset 16: cmdline).
            this.cmdline = u64::from(unsafe { read::<u32>(info + 16) });
            // SAFETY: the loader's command line is a NUL-terminated string.
            let len = unsafe { strlen(this.cmdline) } as u64;
            this.high_water = this.high_water.max(this.cmdline + len + 1);
        }
        if flags & FLAG_MODS != 0 {
            // SAFETY: offsets 20 and 24: mods_count, mods_addr.
            let count = unsafe { read::<u32>(info + 20) } as usize;
            // SAFETY: as above.
            let addr = u64::from(unsafe { read::<u32>(info + 24) });
            this.high_water = this.high_water.max(addr + 16 * count as u64);
            for i in 0..count.min(MAX_ENTRIES) {
                let entry = addr + 16 * i as u64;
                // SAFETY: module entries are 16 bytes: start, end, string, reserved.
                let start = u64::from(unsafe { read::<u32>(entry) });
                // SAFETY: as above.
                let end = u64::from(unsafe { read::<u32>(entry + 4) });
                // SAFETY: as above.
                let cmdline = u64::from(unsafe { read::<u32>(entry + 8) });
                this.high_water = this.high_water.max(end);
                if cmdline != 0 {
                    // SAFETY: module strings are NUL-terminated.
                    let len = unsafe { strlen(cmdline) } as u64;
                    this.high_water = this.high_water.max(cmdline + len + 1);
                }
                this.modules[i] = RawModule {
                    start,
                    end,
                    cmdline,
                };
                this.module_count += 1;
            }
        }
        if flags & FLAG_MMAP != 0 {
            // SAFETY: offsets 44 and 48: mmap_length, mmap_addr.
            let length = u64::from(unsafe { read::<u32>(info + 44) });
            // SAFETY: as above.
            let addr = u64::from(unsafe { read::<u32>(info + 48) });
            this.high_water = this.high_water.max(addr + length);
            let mut entry = addr;
            while entry < addr + length && this.ram_count < MAX_ENTRIES {
                // SAFETY: each entry: size (u32, not counting itself), base (u64),
                // length (u64), type (u32).
                let size = u64::from(unsafe { read::<u32>(entry) });
                // SAFETY: as above.
                let base: u64 = unsafe { read(entry + 4) };
                // SAFETY: as above.
                let len: u64 = unsafe { read(entry + 12) };
                // SAFETY: as above.
                let kind: u32 = unsafe { read(entry + 20) };
                if kind == MMAP_AVAILABLE && len > 0 {
                    this.ram[this.ram_count] = (base, base.saturating_add(len));
                    this.ram_count += 1;
                }
                entry += size + 4;
            }
        }
        this
    }

    /// The kernel command line, copied.
    pub fn cmdline(&self) -> String {
        // SAFETY: `cmdline` came from the loader and was measured in `read`.
        unsafe { copy_string(self.cmdline) }
    }

    /// The modules, copied onto the heap.
    pub fn modules(&self) -> Vec<Module> {
        self.modules[..self.module_count]
            .iter()
            .map(|m| {
                let len = m.end.saturating_sub(m.start) as usize;
                let mut data = alloc::vec![0u8; len];
                for (i, byte) in data.iter_mut().enumerate() {
                    // SAFETY: the module's bytes lie in [start, end), loaded by the
                    // boot loader into identity-mapped memory.
                    *byte = unsafe { read(m.start + i as u64) };
                }
                Module {
                    // SAFETY: the module string was measured in `read`.
                    cmdline: unsafe { copy_string(m.cmdline) },
                    data,
                }
            })
            .collect()
    }
}

/// Copies the NUL-terminated string at `addr` (empty for 0), replacing invalid UTF-8.
///
/// # Safety
/// As for [`strlen`].
unsafe fn copy_string(addr: u64) -> String {
    if addr == 0 {
        return String::new();
    }
    // SAFETY: forwarded from the caller.
    let len = unsafe { strlen(addr) };
    // SAFETY: the `len` bytes before the terminator are readable.
    let bytes: Vec<u8> = (0..len).map(|i| unsafe { read(addr + i as u64) }).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
