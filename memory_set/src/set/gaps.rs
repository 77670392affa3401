//! The size index of the free gaps of a [`MemorySet`](super::MemorySet).
//!
//! Gaps are bucketed by size class (the bit length of `last - first`), so the gaps at
//! least `len` long are the ones in the classes above `class(len)` plus some of that
//! class. Inside a class a gap sits in a slot that never moves while it lives: the area
//! the gap follows keeps a [`GapRef`] to it, so every update is O(1) with no search
//! (a resize within the class rewrites the slot in place). Removed gaps leave holes,
//! chained into a free list through the slots, that later inserts reuse; a class
//! whose holes outnumber its gaps more than [`HOLES_PER_GAP`] times (plus [`SLACK`])
//! is marked dirty and compacted by the set (which re-points the moved gaps' owners),
//! so a walk through a class passes O(gaps) slots.

use alloc::vec::Vec;

/// Number of size classes: lengths `0` (class 0) up to `2^64 - 1` (class 64).
const CLASSES: usize = usize::BITS as usize + 1;

/// Holes a class may hold per gap (plus [`SLACK`]) before it is compacted.
const HOLES_PER_GAP: usize = 3;
/// Holes a class may hold beyond [`HOLES_PER_GAP`] per gap before it is compacted
/// (tiny in unit tests, so that they compact often).
const SLACK: usize = if cfg!(test) { 1 } else { 64 };

/// A freed slot is `(HOLE, next)`: `first > last`, so never a gap; `next` is one more
/// than the position of the next hole of the free list, 0 at its end.
const HOLE: usize = usize::MAX;

/// The size class of a gap of `len + 1` bytes (`len = last - first`).
fn class_of(len: usize) -> usize {
    (usize::BITS - len.leading_zeros()) as usize
}

/// Where a gap lives in the index; held by the area the gap follows (or by the set for
/// the gap that starts at address 0).
/// (A class never holds more than `u32::MAX` slots: there is at most one gap per area,
/// and a set of 2^32 areas would not fit in memory.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GapRef {
    class: u8,
    pos: u32,
}

impl GapRef {
    fn new(class: usize, pos: usize) -> Self {
        debug_assert!(class < CLASSES && u32::try_from(pos).is_ok());
        Self {
            class: class as u8,
            pos: pos as u32,
        }
    }

    fn class(self) -> usize {
        usize::from(self.class)
    }

    fn pos(self) -> usize {
        self.pos as usize
    }
}

/// The gaps of one size class, as `(first, last)` (inclusive, raw), and holes.
#[derive(Clone, Default)]
struct Class {
    slots: Vec<(usize, usize)>,
    /// One more than the position of the first hole; 0: none.
    free: usize,
    /// Number of holes.
    holes: usize,
}

impl Class {
    fn live(&self) -> usize {
        self.slots.len() - self.holes
    }
}

/// The gap index: every free gap once, by size class.
#[derive(Clone)]
pub(super) struct GapIndex {
    classes: Vec<Class>,
    /// Bit `c` set: class `c` holds at least one gap.
    nonempty: u128,
    /// Bit `c` set: class `c` has too many holes and waits for [`Self::compact`].
    dirty: u128,
}

impl GapIndex {
    /// An empty index.
    pub(super) fn new() -> Self {
        let mut classes = Vec::with_capacity(CLASSES);
        classes.resize_with(CLASSES, Class::default);
        Self {
            classes,
            nonempty: 0,
            dirty: 0,
        }
    }

    /// The gap `r` refers to, as `(first, last)`.
    #[inline]
    pub(super) fn get(&self, r: GapRef) -> (usize, usize) {
        self.classes[r.class()].slots[r.pos()]
    }

    /// Like [`Self::get`], but `None` for a reference to nothing (for validation).
    fn try_get(&self, r: GapRef) -> Option<(usize, usize)> {
        let gap = *self.classes.get(r.class())?.slots.get(r.pos())?;
        (gap.0 <= gap.1 && class_of(gap.1 - gap.0) == r.class()).then_some(gap)
    }

    /// Makes `r` refer to `gap` (`None`: no gap), updating the index: in place when the
    /// size class stays, else by freeing the old slot and taking a new one. O(1).
    #[inline]
    pub(super) fn set(&mut self, r: &mut Option<GapRef>, gap: Option<(usize, usize)>) {
        match (*r, gap) {
            (Some(old), Some((first, last))) if old.class() == class_of(last - first) => {
                self.classes[old.class()].slots[old.pos()] = (first, last);
            }
            (old, gap) => {
                if let Some(old) = old {
                    self.remove(old);
                }
                *r = gap.map(|(first, last)| self.insert(first, last));
            }
        }
    }

    /// Adds the gap `[first, last]`.
    fn insert(&mut self, first: usize, last: usize) -> GapRef {
        let c = class_of(last - first);
        let class = &mut self.classes[c];
        let pos = match class.free.checked_sub(1) {
            Some(pos) => {
                class.free = class.slots[pos].1;
                class.holes -= 1;
                class.slots[pos] = (first, last);
                pos
            }
            None => {
                class.slots.push((first, last));
                class.slots.len() - 1
            }
        };
        self.nonempty |= 1 << c;
        GapRef::new(c, pos)
    }

    /// Drops the gap `r` refers to.
    pub(super) fn remove(&mut self, r: GapRef) {
        let c = r.class();
        let class = &mut self.classes[c];
        class.slots[r.pos()] = (HOLE, class.free);
        class.free = r.pos() + 1;
        class.holes += 1;
        let live = class.live();
        if live == 0 {
            // No reference into the class is left: start it afresh.
            class.slots.clear();
            class.free = 0;
            class.holes = 0;
            self.nonempty &= !(1 << c);
            self.dirty &= !(1 << c);
        } else if class.holes > HOLES_PER_GAP * live + SLACK {
            self.dirty |= 1 << c;
        }
    }

    /// Whether some class waits to be compacted.
    #[inline]
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty != 0
    }

    /// Compacts every dirty class: its gaps move to the front, in slot order. Calls
    /// `moved(gap, new_ref)` for each gap that moved so that its owner can be
    /// re-pointed.
    pub(super) fn compact(&mut self, mut moved: impl FnMut((usize, usize), GapRef)) {
        while self.dirty != 0 {
            let c = self.dirty.trailing_zeros() as usize;
            self.dirty &= !(1 << c);
            let class = &mut self.classes[c];
            class.free = 0;
            class.holes = 0;
            let mut pos = 0;
            for i in 0..class.slots.len() {
                let gap = class.slots[i];
                if gap.0 <= gap.1 {
                    if pos != i {
                        class.slots[pos] = gap;
                        moved(gap, GapRef::new(c, pos));
                    }
                    pos += 1;
                }
            }
            class.slots.truncate(pos);
        }
    }

    /// The gaps `(first, last)` with `last - first >= len` (at least `len + 1` bytes),
    /// in no particular order. O(1) to start; the walk passes the gaps of the classes
    /// from `class(len)` up (each at least half as long as asked) plus their holes.
    pub(super) fn at_least(&self, len: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        // The non-empty classes from `class(len)` up, lowest first.
        let mut classes = self.nonempty >> class_of(len) << class_of(len);
        core::iter::from_fn(move || {
            let c = classes.trailing_zeros() as usize;
            classes &= classes.wrapping_sub(1);
            self.classes.get(c)
        })
        .flat_map(|class| class.slots.iter().copied())
        .filter(move |&(first, last)| first <= last && last - first >= len)
    }

    /// Checks the index against itself and against the references the set holds:
    /// `refs` gives each reference, the gap it should hold and the error if it does not.
    pub(super) fn check(
        &self,
        refs: impl Iterator<Item = (Option<GapRef>, Option<(usize, usize)>, &'static str)>,
    ) -> Result<(), &'static str> {
        let mut referenced = 0;
        for (r, expected, missing) in refs {
            match (r, expected) {
                (None, None) => {}
                (Some(r), Some(gap)) if self.try_get(r) == Some(gap) => referenced += 1,
                (_, Some(_)) => return Err(missing),
                (Some(_), None) => {
                    return Err("the gap index holds a range that is not a free gap");
                }
            }
        }
        let mut live = 0;
        for (c, class) in self.classes.iter().enumerate() {
            // The free list must pass every hole once (so exactly `holes` steps).
            let holes = class.slots.iter().filter(|g| g.0 > g.1).count();
            let (mut next, mut listed) = (class.free, 0);
            while let Some(pos) = next.checked_sub(1) {
                match class.slots.get(pos) {
                    Some(&(HOLE, after)) if listed < holes => (next, listed) = (after, listed + 1),
                    _ => return Err("the gap index lost track of a free slot"),
                }
            }
            if listed != holes || holes != class.holes {
                return Err("the gap index lost track of a free slot");
            }
            if (class.live() > 0) != (self.nonempty >> c & 1 != 0) {
                return Err("the gap index marks a size class wrongly");
            }
            live += class.live();
        }
        if live != referenced {
            return Err("the gap index holds a range that is not a free gap");
        }
        Ok(())
    }

    /// Every gap as `(last - first, first)`, for tests.
    #[cfg(test)]
    pub(super) fn keys(&self) -> alloc::collections::BTreeSet<(usize, usize)> {
        self.classes
            .iter()
            .flat_map(|class| class.slots.iter())
            .filter(|g| g.0 <= g.1)
            .map(|&(first, last)| (last - first, first))
            .collect()
    }

    /// The number of slots (gaps and holes), for tests.
    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.classes.iter().map(|class| class.slots.len()).sum()
    }

    /// Adds a gap no area refers to, for tests of [`Self::check`].
    #[cfg(test)]
    pub(super) fn insert_stray(&mut self, first: usize, last: usize) {
        self.insert(first, last);
    }
}
