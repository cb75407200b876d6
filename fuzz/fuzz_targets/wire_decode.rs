//! The worker protocol frame decoder: arbitrary bytes from a (possibly hostile or
//! broken) worker never panic, and whatever decodes re-encodes to a frame that decodes
//! to the same value.
#![no_main]

use handoff::__private::wire::{decode, encode, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(data) {
        let bytes = encode(&frame);
        assert!(bytes.len() <= MAX_FRAME_LEN);
        assert_eq!(decode(&bytes), Ok(frame));
    }
});
