//! A minimal spin lock for the state an address space shares with its owned regions.
//!
//! An [`OwnedRegion`](super::OwnedRegion) must reach its address space when dropped, so
//! the space's state lives behind `Arc<SpinLock<..>>`. The hypervisor runs one guest at a
//! time per core, so the lock is uncontended in practice; it exists to make sharing sound
//! (and the space `Send` when its parts are).

use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::hint::spin_loop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering, fence};

/// A test-and-set spin lock.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one guard at a time (acquire/release on `locked`),
// so sharing the lock across threads only ever gives one thread access to `T`; `T: Send`
// is required because that thread may differ from the one that created it.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new, unlocked lock around `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins until the lock is free, then takes it.
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock if it is free.
    #[cfg(test)]
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }
}

/// Exclusive access to the value of a [`SpinLock`]; unlocks on drop.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is held by it, so no other
        // reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// Exclusive access to the value behind `arc`, for a caller that holds `arc` mutably.
///
/// When `arc` is the only handle on its lock (no clone and no weak handle exist, as
/// while no [`OwnedRegion`](super::OwnedRegion) or snapshot of the space is alive), no
/// other thread can reach the lock, so the value is borrowed straight through `arc`
/// without [`SpinLock::lock`]'s locked compare-exchange. A locked instruction waits for
/// every earlier store of this CPU to drain to memory (Intel SDM vol. 3A 8.2.5,
/// "Strengthening or Weakening the Memory-Ordering Model"; AMD APM vol. 1 3.9.2,
/// "Forcing Memory Order"): after the 4 KiB zeroing of the previous fault it cost the
/// W4 fault path 6-8 % (measured in the bench). Otherwise it locks.
pub(crate) fn lock_exclusive<T>(arc: &mut Arc<SpinLock<T>>) -> Exclusive<'_, T> {
    if Arc::strong_count(arc) == 1 && Arc::weak_count(arc) == 0 {
        // The handle that was dropped last released the lock and decremented the count
        // with release ordering; this fence makes its writes to the value visible here.
        fence(Ordering::Acquire);
        // SAFETY: `arc` is the only strong handle and no weak one exists, and the
        // caller holds it mutably, so no other handle can be made and no guard of the
        // lock (each borrows the lock through some handle) is alive: nothing else can
        // reach the value while the returned borrow of `arc` lasts.
        Exclusive::Unique(unsafe { &mut *arc.value.get() })
    } else {
        Exclusive::Locked(arc.lock())
    }
}

/// What [`lock_exclusive`] returns: the value, borrowed without or with the lock.
pub(crate) enum Exclusive<'a, T> {
    /// The only handle: no lock taken.
    Unique(&'a mut T),
    /// Shared handles exist: the lock is held.
    Locked(SpinGuard<'a, T>),
}

impl<T> Deref for Exclusive<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Exclusive::Unique(v) => v,
            Exclusive::Locked(g) => g,
        }
    }
}

impl<T> DerefMut for Exclusive<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match self {
            Exclusive::Unique(v) => v,
            Exclusive::Locked(g) => g,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_skips_the_lock_only_for_the_only_handle() {
        let mut a = Arc::new(SpinLock::new(1));
        {
            let mut e = lock_exclusive(&mut a);
            assert!(matches!(e, Exclusive::Unique(_)));
            *e += 1;
        }
        let b = Arc::clone(&a);
        {
            let mut e = lock_exclusive(&mut a);
            assert!(matches!(e, Exclusive::Locked(_)), "a clone exists");
            assert!(b.try_lock().is_none(), "the lock is held");
            *e += 1;
        }
        assert_eq!(*b.try_lock().expect("free again"), 3);
        drop(b);
        let w = Arc::downgrade(&a);
        assert!(
            matches!(lock_exclusive(&mut a), Exclusive::Locked(_)),
            "a weak handle exists"
        );
        drop(w);
        assert!(matches!(lock_exclusive(&mut a), Exclusive::Unique(_)));
    }

    #[test]
    fn lock_excludes_second_guard() {
        let l = SpinLock::new(5);
        {
            let mut g = l.lock();
            *g += 1;
            assert!(l.try_lock().is_none());
        }
        assert_eq!(*l.try_lock().expect("free again"), 6);
    }
}
