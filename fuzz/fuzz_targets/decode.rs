//! Feeds arbitrary bytes to the frame decoder, as a compromised guest or a
//! broken host could. The decoder must return frames or errors, never panic,
//! and every frame it accepts must encode back to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runner_protocol::{Decoder, Frame, encode};

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::new(1 << 20);
    let mut rest = data;
    while let Ok(Some((frame, used))) = decoder.decode(rest) {
        let mut again = Vec::new();
        encode(&frame, &mut again);
        // JSON payloads may be re-serialised differently (whitespace, key
        // order); raw payloads must match byte for byte.
        if matches!(frame, Frame::Stdout(_) | Frame::Stderr(_) | Frame::Done) {
            assert_eq!(again, rest[..used]);
        }
        let (decoded, _) = decoder.decode(&again).unwrap().unwrap();
        assert_eq!(decoded, frame);
        rest = &rest[used..];
    }
    // The blocking reader must agree with the buffer decoder.
    let mut reader = data;
    let _ = decoder.read(&mut reader);
});
