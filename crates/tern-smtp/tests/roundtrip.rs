//! Property tests: codec round trips and split-read invariance.

use proptest::prelude::*;
use tern_smtp::{
    DataDecoder, DataEncoder, DataStatus, EnhancedCode, LineFramer, Reply, ReplyParser, encode_data,
    normalize_line_endings, parse_command, xtext_decode, xtext_encode,
};

/// Bodies rich in the bytes that matter: dots, CR, LF, NUL.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(b'.'),
            3 => Just(b'\r'),
            3 => Just(b'\n'),
            1 => Just(0u8),
            4 => b'a'..=b'e',
            1 => any::<u8>(),
        ],
        0..200,
    )
}

/// What a body looks like after `encode_data` and decoding.
fn expected(body: &[u8]) -> Vec<u8> {
    let mut n = normalize_line_endings(body);
    if !n.is_empty() && !n.ends_with(b"\r\n") {
        n.extend_from_slice(b"\r\n");
    }
    n
}

/// Decodes `pieces` in order; returns output, consumed total and whether
/// CR/LF violations were seen.
fn decode(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>, bool) {
    let mut d = DataDecoder::new();
    let mut out = Vec::new();
    let mut off = 0;
    for p in pieces {
        match d.feed(p, &mut out) {
            DataStatus::NeedMore => off += p.len(),
            DataStatus::Done { consumed } => {
                let v = d.violations();
                return (out, Some(off + consumed), v.bare_cr || v.bare_lf);
            }
        }
    }
    let v = d.violations();
    (out, None, v.bare_cr || v.bare_lf)
}

fn split_at_points<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut pts: Vec<usize> = points.iter().map(|p| p % (data.len() + 1)).collect();
    pts.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in pts {
        out.push(&data[last..p]);
        last = p;
    }
    out.push(&data[last..]);
    out
}

fn reply_text() -> impl Strategy<Value = String> {
    // Printable text that does not start with a digit (so it cannot be
    // mistaken for an enhanced code) and has no CR/LF.
    "([a-zA-Z .,:;<>()\\[\\]-][ -~]{0,40})?"
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        2u16..=5,
        0u16..=5,
        0u16..=9,
        prop::option::of((0u16..=999, 0u16..=999)),
        prop::collection::vec(reply_text(), 1..5),
    )
        .prop_map(|(a, b, c, enh, lines)| {
            let code = a * 100 + b * 10 + c;
            let enhanced = enh
                .filter(|_| a != 3)
                .map(|(s, d)| EnhancedCode::new(a as u8, s, d));
            Reply {
                code,
                enhanced,
                lines,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_gives_normalised_body(body in body()) {
        let enc = encode_data(&body);
        let (out, consumed, crlf_violation) = decode(&[&enc]);
        prop_assert_eq!(consumed, Some(enc.len()));
        prop_assert_eq!(out, expected(&body));
        prop_assert!(!crlf_violation);
    }

    #[test]
    fn decoding_is_the_same_split_at_every_offset(body in body()) {
        let mut enc = encode_data(&body);
        let whole_len = enc.len();
        enc.extend_from_slice(b"QUIT\r\n");
        let whole = decode(&[&enc]);
        prop_assert_eq!(whole.1, Some(whole_len));
        for i in 0..=enc.len() {
            let (a, b) = enc.split_at(i);
            prop_assert_eq!(&decode(&[a, b]), &whole, "split at {}", i);
        }
    }

    #[test]
    fn decoding_is_the_same_for_random_split_points(
        body in body(),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let enc = encode_data(&body);
        let pieces = split_at_points(&enc, &points);
        prop_assert_eq!(decode(&pieces), decode(&[&enc]));
    }

    #[test]
    fn decoding_raw_input_is_split_invariant(
        raw in body(),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        let whole = d.feed(&raw, &mut out);
        let v = d.violations();
        let pieces = split_at_points(&raw, &points);
        let (out2, consumed, _) = decode(&pieces);
        prop_assert_eq!(out2, out);
        let whole_consumed = match whole {
            DataStatus::Done { consumed } => Some(consumed),
            DataStatus::NeedMore => None,
        };
        prop_assert_eq!(consumed, whole_consumed);
        let mut d2 = DataDecoder::new();
        for p in &pieces {
            if let DataStatus::Done { .. } = d2.feed(p, &mut Vec::new()) {
                break;
            }
        }
        prop_assert_eq!(d2.violations(), v);
    }

    #[test]
    fn streaming_encoder_matches_one_shot_for_any_chunking(
        body in body(),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut enc = DataEncoder::new();
        let mut out = Vec::new();
        for piece in split_at_points(&body, &points) {
            enc.encode(piece, &mut out);
        }
        enc.finish(&mut out);
        prop_assert_eq!(out, encode_data(&body));
    }

    #[test]
    fn max_size_keeps_a_prefix_and_counts_everything(body in body(), max in 0u64..100) {
        let enc = encode_data(&body);
        let mut d = DataDecoder::with_max_size(max);
        let mut out = Vec::new();
        d.feed(&enc, &mut out);
        let full = expected(&body);
        prop_assert_eq!(d.total_len(), full.len() as u64);
        prop_assert_eq!(d.overflowed(), full.len() as u64 > max);
        let keep = full.len().min(max as usize);
        prop_assert_eq!(&out[..], &full[..keep]);
    }

    #[test]
    fn xtext_encode_then_decode_is_identity(s in any::<String>()) {
        let enc = xtext_encode(&s);
        prop_assert!(enc.bytes().all(|b| (33..=126).contains(&b) && b != b'='));
        prop_assert_eq!(xtext_decode(&enc), Ok(s));
    }

    #[test]
    fn reply_round_trips_through_parser_split_at_every_offset(r in reply()) {
        let bytes = r.to_bytes();
        for i in 0..=bytes.len() {
            let mut p = ReplyParser::new();
            p.push(&bytes[..i]);
            let first = p.next_reply();
            p.push(&bytes[i..]);
            let got = first.or_else(|| p.next_reply());
            prop_assert_eq!(got, Some(Ok(r.clone())), "split at {}", i);
            prop_assert_eq!(p.next_reply(), None);
        }
    }

    #[test]
    fn several_replies_parse_byte_by_byte(rs in prop::collection::vec(reply(), 1..4)) {
        let mut p = ReplyParser::new();
        let mut got = Vec::new();
        for r in &rs {
            for b in r.to_bytes() {
                p.push(&[b]);
                while let Some(x) = p.next_reply() {
                    got.push(x);
                }
            }
        }
        let want: Vec<_> = rs.into_iter().map(Ok).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn reply_parser_never_panics_and_stays_bounded(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut p = ReplyParser::with_limits(64, 256);
        for chunk in data.chunks(7) {
            p.push(chunk);
            while let Some(r) = p.next_reply() {
                if let Ok(r) = r {
                    prop_assert!((200..=559).contains(&r.code));
                }
            }
            prop_assert!(p.buffered().len() <= 64 + 7);
        }
    }

    #[test]
    fn parse_command_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Err(e) = parse_command(&data) {
            let r = e.reply();
            prop_assert!((500..=555).contains(&r.code));
        }
    }

    #[test]
    fn line_framer_is_split_invariant(
        data in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), b'a'..=b'c'], 0..1500),
        points in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let collect = |pieces: &[&[u8]]| {
            let mut f = LineFramer::new();
            let mut got = Vec::new();
            for p in pieces {
                f.push(p);
                while let Some(l) = f.next_line() {
                    got.push(l);
                }
                assert!(f.buffered().len() <= 512 + p.len());
            }
            got
        };
        let whole = collect(&[&data]);
        let pieces = split_at_points(&data, &points);
        prop_assert_eq!(collect(&pieces), whole);
    }
}
