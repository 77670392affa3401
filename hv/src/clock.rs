//! Guest time from the host's time-stamp counter: nanoseconds since the hypervisor
//! calibrated the TSC against the PIT at boot ([`set_tsc_hz`]). Each guest's virtual
//! devices count from the moment it was created (`GuestClock`), so a guest sees its
//! own time start at 0, and time advances while it is descheduled, as wall time does.
//!
//! RDTSC is not intercepted: guests read the same counter (Intel SDM vol. 3C 25.3,
//! "RDTSC exiting" clear; AMD APM vol. 2 15.9, the RDTSC intercept clear), so a guest
//! that calibrates its TSC against the virtual PIT finds the host's frequency.

use core::sync::atomic::{AtomicU64, Ordering};

/// Default TSC frequency until calibration (host tests): 1 GHz.
static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Sets the measured TSC frequency.
pub fn set_tsc_hz(hz: u64) {
    if hz > 0 {
        TSC_HZ.store(hz, Ordering::Relaxed);
    }
}

/// The TSC frequency in use.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The time-stamp counter (Intel SDM vol. 2B "RDTSC").
pub fn tsc() -> u64 {
    // SAFETY: RDTSC only reads the counter (CR4.TSD is clear at CPL 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Converts TSC cycles to nanoseconds.
pub fn cycles_to_ns(cycles: u64) -> u64 {
    (u128::from(cycles) * 1_000_000_000 / u128::from(tsc_hz())) as u64
}

/// One guest's clock: nanoseconds since its creation.
#[derive(Debug, Clone, Copy)]
pub struct GuestClock {
    start: u64,
}

impl GuestClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self { start: tsc() }
    }

    /// Guest nanoseconds now.
    pub fn now(&self) -> u64 {
        cycles_to_ns(tsc().saturating_sub(self.start))
    }
}

impl Default for GuestClock {
    fn default() -> Self {
        Self::new()
    }
}
