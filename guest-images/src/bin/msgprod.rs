//! Scenario `msgprod` (with `msgcons`): the producer of a message exchange through
//! shared windows (see `guest_images::messages`): 10,000 messages with sequence
//! numbers and payloads, written into a ring in window 1 (read-write here, read-only
//! in the consumer) while the consumer's acknowledgements in window 2 (read-only
//! here) leave room, yielding to the consumer (a hypercall) when the ring is full.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::messages::{ACK, MESSAGES, MSG, SLOTS, WAIT_LIMIT, payload, slot};
use guest_images::rt::{read_u64, write_u64, yield_now};
use guest_images::{check, println};

fn scenario() {
    check!(
        read_u64(MSG) == 0 && read_u64(ACK) == 0,
        "windows not zero at start"
    );
    let mut yields = 0u64;
    let mut next = 1;
    while next <= MESSAGES {
        let acked = read_u64(ACK);
        check!(acked < next, "acknowledged {acked} before it was sent");
        while next <= MESSAGES && next - 1 - acked < SLOTS {
            let at = slot(next);
            for word in 0..8 {
                write_u64(at + 8 + 8 * word, payload(next, word));
            }
            write_u64(at, next);
            write_u64(MSG, next);
            next += 1;
        }
        yield_now();
        yields += 1;
        check!(yields < WAIT_LIMIT, "the consumer stopped at {acked}");
    }
    while read_u64(ACK) != MESSAGES {
        yield_now();
        yields += 1;
        check!(
            yields < WAIT_LIMIT,
            "no acknowledgement of the last message"
        );
    }
    println!("producer: {MESSAGES} messages sent and acknowledged ({yields} yields)");
}

guest_images::guest_main!(scenario);
