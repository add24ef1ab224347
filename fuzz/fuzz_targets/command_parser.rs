//! Fuzzes command framing and parsing: no panics, every error has a
//! well-formed reply, and accepted commands survive a display/parse trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_smtp::{LineFramer, ParseContext, parse_command_with};

fuzz_target!(|data: &[u8]| {
    let Some((&flag, data)) = data.split_first() else {
        return;
    };
    let ctx = ParseContext {
        smtputf8: flag & 1 == 1,
        postmaster_domain: (flag & 2 == 2).then(|| "mx.example.test".to_owned()),
    };
    // The whole input as one line.
    check(data, &ctx);
    // And framed into lines, in uneven pieces.
    let mut framer = LineFramer::new();
    for chunk in data.chunks(usize::from(flag % 17) + 1) {
        framer.push(chunk);
        while let Some(line) = framer.next_line() {
            if let Ok(line) = line {
                check(&line, &ctx);
            }
        }
    }
});

fn check(line: &[u8], ctx: &ParseContext) {
    match parse_command_with(line, ctx) {
        Ok(cmd) => {
            let wire = cmd.to_string();
            let again = parse_command_with(wire.as_bytes(), ctx);
            assert_eq!(again.as_ref(), Ok(&cmd), "display/parse mismatch for {wire:?}");
        }
        Err(e) => {
            let reply = e.reply();
            assert!((500..=555).contains(&reply.code));
            let bytes = reply.to_bytes();
            assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        }
    }
}
