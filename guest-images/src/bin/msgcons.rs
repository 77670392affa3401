//! Scenario `msgcons` (with `msgprod`): the consumer of a message exchange through
//! shared windows (see `guest_images::messages`). It checks every message it finds
//! in the ring, in order (sequence number and all eight payload words), acknowledges
//! them through window 2 (the only window it may write), and yields to the producer.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::messages::{ACK, MESSAGES, MSG, SLOTS, WAIT_LIMIT, payload, slot};
use guest_images::rt::{read_u64, write_u64, yield_now};
use guest_images::{check, println};

fn scenario() {
    let mut yields = 0u64;
    let mut expected = 1;
    while expected <= MESSAGES {
        // One read: the producer may run between any two instructions.
        let head = read_u64(MSG);
        check!(
            head + 1 >= expected && head < expected + SLOTS,
            "head {head} while expecting {expected}"
        );
        for seq in expected..=head {
            let at = slot(seq);
            check!(
                read_u64(at) == seq,
                "slot of message {seq} holds {}",
                read_u64(at)
            );
            for word in 0..8 {
                let got = read_u64(at + 8 + 8 * word);
                check!(
                    got == payload(seq, word),
                    "message {seq} word {word}: {got:#x}, expected {:#x}",
                    payload(seq, word)
                );
            }
        }
        if head >= expected {
            write_u64(ACK, head);
            expected = head + 1;
        }
        yield_now();
        yields += 1;
        check!(yields < WAIT_LIMIT, "message {expected} never came");
    }
    println!("consumer: {MESSAGES} messages received in order and verified ({yields} yields)");
}

guest_images::guest_main!(scenario);
