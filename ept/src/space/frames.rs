//! Who owns which RAM frame: private frames, 2 MiB blocks mapped piece by piece, and
//! frames shared copy-on-write between cloned address spaces.
//!
//! Only frames that need more than "this space alone maps this 4 KiB frame once" have
//! an entry (a [`Chunk`]): 2 MiB blocks (a live-piece count, because a 2 MiB leaf can
//! be split into 4 KiB leaves and unmapped piecewise) and shared frames (an `Arc`
//! whose strong count is the number of address spaces referencing the frame). A RAM
//! leaf without a chunk is a private 4 KiB frame. So a guest that is never cloned and
//! never gets 2 MiB frames needs no bookkeeping per frame at all.
//!
//! The last space to let go of a shared frame is the one for which
//! [`Arc::into_inner`] returns `Some`; it frees the frame. A frame whose `Arc` has a
//! strong count of 1 is no longer shared by anyone: a write fault then just restores
//! write access.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;

use memory_set::{HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

use super::budget::{Budget, Charged};
use super::lock::SpinLock;
use crate::frame::FrameAlloc;
use crate::size::LeafSize;

/// The token whose strong count is the number of holders (spaces, frame bundles)
/// sharing a chunk.
pub(crate) struct ShareMark {
    /// The family the frames are charged to when that is not simply the family of
    /// whoever frees them: set when a frame bundle takes them (`share.rs`).
    pub(crate) home: SpinLock<Option<Budget>>,
}

impl Default for ShareMark {
    fn default() -> Self {
        Self {
            home: SpinLock::new(None),
        }
    }
}

impl core::fmt::Debug for ShareMark {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ShareMark")
    }
}

impl ShareMark {
    /// Frees `frames` 4 KiB frames at `base` (a 2 MiB block when `big`) for the last
    /// holder: through `alloc` (its own family's count) unless the frames are
    /// charged to another family, whose count then drops instead.
    fn free<A: FrameAlloc>(self, base: HostPhysAddr, big: bool, alloc: &mut Charged<A>) {
        let home = self.home.lock().take();
        match home {
            Some(home) if !home.same_family(&alloc.budget) => {
                free_block(&mut alloc.host, base, big);
                home.uncharge(if big { PAGE_SIZE_2M / PAGE_SIZE_4K } else { 1 });
            }
            _ => free_block(alloc, base, big),
        }
    }
}

/// Gives a 4 KiB frame or a 2 MiB block back to `alloc`.
pub(crate) fn free_block(alloc: &mut (impl FrameAlloc + ?Sized), base: HostPhysAddr, big: bool) {
    if big {
        alloc.dealloc_2m(base);
    } else {
        alloc.dealloc_frame(base);
    }
}

/// A tracked block of RAM (see the module docs).
#[derive(Debug)]
pub(crate) struct Chunk {
    /// 2 MiB block (from `alloc_2m`) rather than one 4 KiB frame.
    pub(crate) big: bool,
    /// How many 4 KiB pieces of the block this space still maps.
    pub(crate) live: usize,
    /// Present while the chunk may be shared with other spaces.
    pub(crate) share: Option<Arc<ShareMark>>,
}

impl Chunk {
    /// Bytes in the chunk.
    pub(crate) fn bytes(&self) -> usize {
        if self.big { PAGE_SIZE_2M } else { PAGE_SIZE_4K }
    }

    /// 4 KiB frames in the chunk.
    pub(crate) fn frames(&self) -> usize {
        self.bytes() / PAGE_SIZE_4K
    }

    /// Whether another holder (a space, a bundle) still references the chunk, or
    /// this space maps its one 4 KiB frame at more than one address (the zero page).
    pub(crate) fn is_shared(&self) -> bool {
        (!self.big && self.live > 1)
            || self
                .share
                .as_ref()
                .is_some_and(|s| Arc::strong_count(s) > 1)
    }
}

/// The RAM frames of one address space.
#[derive(Debug, Default)]
pub(crate) struct FrameBook {
    chunks: BTreeMap<HostPhysAddr, Chunk>,
    /// 4 KiB frames this space holds (a shared frame counts for every sharer; a 2 MiB
    /// block counts 512 until its last piece goes).
    ram_frames: usize,
}

impl FrameBook {
    /// 4 KiB frames held for RAM.
    pub(crate) fn ram_frames(&self) -> usize {
        self.ram_frames
    }

    /// The number of tracked chunks (2 MiB blocks and shared frames).
    pub(crate) fn tracked(&self) -> usize {
        self.chunks.len()
    }

    /// Records a freshly allocated private 4 KiB frame.
    pub(crate) fn add_4k(&mut self) {
        self.ram_frames += 1;
    }

    /// Records a freshly allocated private 2 MiB block, mapped as one leaf.
    pub(crate) fn add_2m(&mut self, base: HostPhysAddr) {
        self.chunks.insert(
            base,
            Chunk {
                big: true,
                live: PAGE_SIZE_2M / PAGE_SIZE_4K,
                share: None,
            },
        );
        self.ram_frames += PAGE_SIZE_2M / PAGE_SIZE_4K;
    }

    /// The chunk containing `hpa` and its base, if tracked.
    pub(crate) fn chunk_of(&self, hpa: HostPhysAddr) -> Option<(HostPhysAddr, &Chunk)> {
        let (&base, chunk) = self.chunks.range(..=hpa).next_back()?;
        (hpa.as_usize() - base.as_usize() < chunk.bytes()).then_some((base, chunk))
    }

    /// Whether the frame behind `hpa` is shared with another space right now.
    pub(crate) fn is_shared(&self, hpa: HostPhysAddr) -> bool {
        self.chunk_of(hpa).is_some_and(|(_, c)| c.is_shared())
    }

    /// Drops the share of the chunk containing `hpa` if nobody else holds it (the
    /// frame becomes private again). Returns whether the frame is now private.
    pub(crate) fn unshare_if_unique(&mut self, hpa: HostPhysAddr) -> bool {
        let Some((base, chunk)) = self.chunk_of(hpa) else {
            return true;
        };
        if chunk.is_shared() {
            return false;
        }
        let big = chunk.big;
        if big {
            if let Some(c) = self.chunks.get_mut(&base) {
                c.share = None;
            }
        } else {
            self.chunks.remove(&base);
        }
        true
    }

    /// Releases one unmapped RAM leaf (`size` bytes at `hpa`): the frame is freed to
    /// `alloc` when this space was its last user.
    pub(crate) fn release<A: FrameAlloc>(
        &mut self,
        hpa: HostPhysAddr,
        size: LeafSize,
        alloc: &mut Charged<A>,
    ) {
        let pieces = size.size() / PAGE_SIZE_4K;
        let Some((base, _)) = self.chunk_of(hpa) else {
            // An untracked leaf is a private 4 KiB frame.
            debug_assert_eq!(size, LeafSize::Size4K);
            alloc.dealloc_frame(hpa);
            self.ram_frames -= 1;
            return;
        };
        let Some(chunk) = self.chunks.get_mut(&base) else {
            return;
        };
        chunk.live = chunk.live.saturating_sub(pieces);
        if chunk.live > 0 {
            return;
        }
        let Some(chunk) = self.chunks.remove(&base) else {
            return;
        };
        self.ram_frames -= chunk.frames();
        match chunk.share {
            Some(mark) => {
                if let Some(mark) = Arc::into_inner(mark) {
                    mark.free(base, chunk.big, alloc);
                }
            }
            None => free_block(alloc, base, chunk.big),
        }
    }

    /// Marks the frame of a RAM leaf (`size` bytes at `hpa`) shared and records the
    /// same share in `child`, which maps the leaf too. Call once per leaf.
    pub(crate) fn share_leaf_with(
        &mut self,
        hpa: HostPhysAddr,
        size: LeafSize,
        child: &mut FrameBook,
    ) {
        let (base, big, mark) = self.mark_of(hpa);
        child.adopt(base, big, size.size() / PAGE_SIZE_4K, mark);
    }

    /// The reference on the chunk holding the frame at `hpa` (a 4 KiB frame gets a
    /// chunk of its own first): its base, whether it is a 2 MiB block, and a new
    /// holder of its share count. Whoever keeps the returned mark keeps the frame
    /// alive: a later [`FrameBook::release`] of the last leaf no longer frees it.
    /// A frame without a home gets `home`: the family it is charged to now.
    pub(crate) fn pin(
        &mut self,
        hpa: HostPhysAddr,
        home: &Budget,
    ) -> (HostPhysAddr, bool, Arc<ShareMark>) {
        let (base, big, mark) = self.mark_of(hpa);
        mark.home.lock().get_or_insert_with(|| home.clone());
        (base, big, mark)
    }

    /// A new reference on the chunk of the frame at `hpa` (made tracked and shared
    /// first if need be): the chunk's base, whether it is a 2 MiB block, the mark.
    fn mark_of(&mut self, hpa: HostPhysAddr) -> (HostPhysAddr, bool, Arc<ShareMark>) {
        let (base, big) = match self.chunk_of(hpa) {
            Some((base, c)) => (base, c.big),
            None => {
                self.chunks.insert(
                    hpa,
                    Chunk {
                        big: false,
                        live: 1,
                        share: None,
                    },
                );
                (hpa, false)
            }
        };
        let mark = match self.chunks.get_mut(&base) {
            Some(c) => c.share.get_or_insert_with(Arc::default).clone(),
            None => Arc::default(),
        };
        (base, big, mark)
    }

    /// Records `pieces` 4 KiB pieces of the chunk at `base` (a 2 MiB block when
    /// `big`) that this space now maps, holding them through `mark` (the chunk's
    /// reference count). A chunk the space already holds just gains live pieces.
    pub(crate) fn adopt(
        &mut self,
        base: HostPhysAddr,
        big: bool,
        pieces: usize,
        mark: Arc<ShareMark>,
    ) {
        match self.chunks.get_mut(&base) {
            Some(c) => {
                c.live += pieces;
                c.share.get_or_insert(mark);
            }
            None => {
                let chunk = Chunk {
                    big,
                    live: pieces,
                    share: Some(mark),
                };
                self.ram_frames += chunk.frames();
                self.chunks.insert(base, chunk);
            }
        }
    }

    /// Iterates over the tracked chunks (for reports and tests).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (HostPhysAddr, &Chunk)> {
        self.chunks.iter().map(|(&b, c)| (b, c))
    }
}
