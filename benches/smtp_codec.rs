//! Protocol codec speed: command parsing, DATA decoding and DATA encoding.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tern_smtp::{DataDecoder, DataEncoder, DataStatus, encode_data, parse_command};

/// A realistic session's worth of command lines (without CRLF).
const COMMANDS: &[&[u8]] = &[
    b"EHLO client.example.test",
    b"MAIL FROM:<alice.sender@example.test> SIZE=48213 BODY=8BITMIME",
    b"RCPT TO:<bob@example.net>",
    b"RCPT TO:<carol.recipient+tag@mail.example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;carol.recipient+2Btag@mail.example.org",
    b"RCPT TO:<dave@[192.0.2.10]>",
    b"DATA",
    b"MAIL FROM:<> RET=HDRS ENVID=QQ314159",
    b"RCPT TO:<\"quoted user\"@example.com>",
    b"RSET",
    b"NOOP",
    b"QUIT",
];

/// About 1 MiB of mail-like text with some lines that need dot-stuffing.
fn sample_body() -> Vec<u8> {
    let mut body = Vec::with_capacity(1 << 20);
    body.extend_from_slice(
        b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.net>\r\n\
          Subject: quarterly report\r\nMIME-Version: 1.0\r\n\
          Content-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let lines: [&[u8]; 6] = [
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.",
        b"Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi.",
        b".a line that starts with a dot and must be stuffed",
        b"",
        b"Duis aute irure dolor in reprehenderit in voluptate velit esse cillum.",
        b"> quoted text from an earlier message, with some punctuation: 1.2.3.",
    ];
    let mut i = 0;
    while body.len() < (1 << 20) {
        body.extend_from_slice(lines[i % lines.len()]);
        body.extend_from_slice(b"\r\n");
        i += 1;
    }
    body
}

fn bench_commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_parse");
    g.throughput(Throughput::Elements(COMMANDS.len() as u64));
    g.bench_function("session_mix", |b| {
        b.iter(|| {
            for line in COMMANDS {
                let cmd = parse_command(black_box(line));
                black_box(cmd.is_ok());
            }
        });
    });
    g.finish();
}

fn bench_data(c: &mut Criterion) {
    let body = sample_body();
    let wire = encode_data(&body);
    const CHUNK: usize = 16 * 1024;

    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    let mut out = Vec::with_capacity(wire.len());
    g.bench_function("decode_1MiB_16KiB_chunks", |b| {
        b.iter(|| {
            out.clear();
            let mut d = DataDecoder::with_max_size(32 << 20);
            for chunk in wire.chunks(CHUNK) {
                if let DataStatus::Done { consumed } = d.feed(black_box(chunk), &mut out) {
                    black_box(consumed);
                    break;
                }
            }
            black_box(d.violations().any());
        });
    });

    g.throughput(Throughput::Bytes(body.len() as u64));
    let mut enc_out = Vec::with_capacity(wire.len() + 16);
    g.bench_function("encode_1MiB_16KiB_chunks", |b| {
        b.iter(|| {
            enc_out.clear();
            let mut e = DataEncoder::new();
            for chunk in body.chunks(CHUNK) {
                e.encode(black_box(chunk), &mut enc_out);
            }
            e.finish(&mut enc_out);
            black_box(enc_out.len());
        });
    });
    g.bench_function("encode_data_1MiB_one_shot", |b| {
        b.iter(|| black_box(encode_data(black_box(&body)).len()));
    });
    g.finish();
}

criterion_group!(benches, bench_commands, bench_data);
criterion_main!(benches);
