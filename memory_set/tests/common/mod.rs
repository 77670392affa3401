//! The random area operations shared by the model-based and the differential tests.

use memory_set::PAGE_SIZE_4K;
use proptest::prelude::*;

/// The page size the tests work in.
pub const PAGE: usize = PAGE_SIZE_4K;
/// Pages in the test window.
pub const N: usize = 64;

/// A `map`, `unmap` or `protect` of `n` pages from `page` (relative to the window).
#[derive(Clone, Debug)]
pub enum AreaOp {
    /// Map an area with `flags`, replacing what is there when `replace`.
    Map {
        page: usize,
        n: usize,
        flags: u8,
        replace: bool,
    },
    /// Unmap the range.
    Unmap { page: usize, n: usize },
    /// Give the range the flags `new`, only where they are `only` if that is set.
    Protect {
        page: usize,
        n: usize,
        new: u8,
        only: Option<u8>,
    },
}

/// Runs of 1 to 16 pages inside the window, `(page, n)`.
fn page_run() -> impl Strategy<Value = (usize, usize)> + Clone {
    (0..N, 1..=16usize).prop_map(|(page, n)| (page, n.min(N - page)))
}

/// Maps of a page run with flags `0..4`.
pub fn map_op() -> impl Strategy<Value = AreaOp> {
    (page_run(), 0..4u8, any::<bool>()).prop_map(|((page, n), flags, replace)| AreaOp::Map {
        page,
        n,
        flags,
        replace,
    })
}

/// Unmaps of a page run.
pub fn unmap_op() -> impl Strategy<Value = AreaOp> {
    page_run().prop_map(|(page, n)| AreaOp::Unmap { page, n })
}

/// Protects of a page run to flags `0..4`, maybe only where the flags are some `0..4`.
pub fn protect_op() -> impl Strategy<Value = AreaOp> {
    (page_run(), 0..4u8, proptest::option::of(0..4u8))
        .prop_map(|((page, n), new, only)| AreaOp::Protect { page, n, new, only })
}
