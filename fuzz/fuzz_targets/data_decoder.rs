//! Fuzzes the DATA decoder: no panics, the result does not depend on how
//! the input is split, the size limit holds, and encode/decode round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_smtp::{DataDecoder, DataStatus, encode_data, normalize_line_endings};

fn decode(pieces: &mut dyn Iterator<Item = &[u8]>, max: u64) -> (Vec<u8>, Option<usize>, u64) {
    let mut d = DataDecoder::with_max_size(max);
    let mut out = Vec::new();
    let mut off = 0;
    for p in pieces {
        match d.feed(p, &mut out) {
            DataStatus::NeedMore => off += p.len(),
            DataStatus::Done { consumed } => {
                assert!(consumed <= p.len());
                return (out, Some(off + consumed), d.total_len());
            }
        }
    }
    (out, None, d.total_len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let max = u64::from(step) * 16;
    let whole = decode(&mut std::iter::once(data), max);
    let split = decode(&mut data.chunks(usize::from(step % 31) + 1), max);
    assert_eq!(whole, split);
    assert!(whole.0.len() as u64 <= max);
    assert!(whole.0.len() as u64 <= whole.2);

    let enc = encode_data(data);
    let (out, consumed, _) = decode(&mut std::iter::once(&enc[..]), u64::MAX);
    assert_eq!(consumed, Some(enc.len()));
    let mut want = normalize_line_endings(data);
    if !want.is_empty() && !want.ends_with(b"\r\n") {
        want.extend_from_slice(b"\r\n");
    }
    assert_eq!(out, want);
});
