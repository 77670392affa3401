//! The message exchange of `msgprod` and `msgcons` through two shared windows.
//!
//! Window 1 (read-write in the producer, read-only in the consumer) holds, at offset
//! 0, the sequence number of the last message written, and a ring of [`SLOTS`]
//! slots: message `seq` goes to slot `seq % SLOTS`, its sequence number first, then
//! its eight payload words. Window 2 (read-write in the consumer, read-only in the
//! producer) holds the sequence number of the last message the consumer verified.
//! The producer writes while the ring has room, then yields; the consumer verifies
//! what it finds, acknowledges it, then yields.

/// Window 1: the last sequence number written, then the ring.
pub const MSG: u64 = 0x400_0000;
/// Window 2: the last sequence number verified.
pub const ACK: u64 = 0x400_1000;
/// Messages exchanged.
pub const MESSAGES: u64 = 10_000;
/// Slots in the ring.
pub const SLOTS: u64 = 48;
/// Yields either side waits at most in all before it gives up.
pub const WAIT_LIMIT: u64 = 1_000_000;

/// The guest-physical address of the slot of message `seq`: its sequence number,
/// then eight payload words.
pub fn slot(seq: u64) -> u64 {
    MSG + 64 + (seq % SLOTS) * 80
}

/// Payload word `word` of message `seq`.
pub fn payload(seq: u64, word: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (word << 56) ^ 0x5A5A
}
