//! The header work done before a message is queued. Pure functions, no I/O.
//!
//! * [`received_header`]: the trace field of RFC 5321 section 4.4, with the protocol names of RFC 3848
//!   (`ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`) and RFC 6531 (`UTF8SMTP...`).
//! * [`scan_headers`]: counts Received fields and looks for Message-ID and Date, in the header section only
//!   (up to the first empty line).
//! * [`prepare_message`]: prepends Received and, when missing, Message-ID and Date (RFC 6409 sections 8.2
//!   and 8.3: a submission server may add them).
//! * dates come from [`tern_core::time::rfc5322_date`]: `Sat, 28 Nov 2026 13:26:49 +0000`.

use std::net::IpAddr;
use std::time::SystemTime;

use tern_core::time::rfc5322_date;

/// More Received fields than this and the message is taken to be looping (RFC 5321 section 6.3): `554 5.4.6`.
pub const MAX_RECEIVED: usize = 100;

/// How the message came in, for the `with` clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Protocol {
    /// EHLO (rather than HELO) was used.
    pub esmtp: bool,
    /// The session is under TLS.
    pub tls: bool,
    /// The client authenticated.
    pub auth: bool,
    /// The transaction used SMTPUTF8.
    pub utf8: bool,
}

impl Protocol {
    /// The registered protocol name: `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA` (RFC 3848), or their
    /// `UTF8SMTP` forms (RFC 6531 section 3.7.3) for SMTPUTF8 transactions.
    pub fn name(self) -> &'static str {
        match (self.utf8, self.esmtp, self.tls, self.auth) {
            (_, false, _, _) => "SMTP",
            (false, true, false, false) => "ESMTP",
            (false, true, true, false) => "ESMTPS",
            (false, true, false, true) => "ESMTPA",
            (false, true, true, true) => "ESMTPSA",
            (true, true, false, false) => "UTF8SMTP",
            (true, true, true, false) => "UTF8SMTPS",
            (true, true, false, true) => "UTF8SMTPA",
            (true, true, true, true) => "UTF8SMTPSA",
        }
    }
}

/// What goes into a Received field.
#[derive(Debug, Clone)]
pub struct ReceivedInfo<'a> {
    /// The EHLO/HELO argument as the client sent it.
    pub helo: &'a str,
    /// The client's address.
    pub peer: IpAddr,
    /// This server's name.
    pub hostname: &'a str,
    /// How the message came in.
    pub protocol: Protocol,
    /// The queue id of the message.
    pub id: &'a str,
    /// The recipient, when there is exactly one.
    pub single_recipient: Option<&'a str>,
    /// When the message was received.
    pub time: SystemTime,
}

/// The address literal for `ip` (`[192.0.2.1]`, `[IPv6:2001:db8::1]`); IPv4-mapped IPv6 addresses are written
/// as IPv4.
pub fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => format!("[{a}]"),
        IpAddr::V6(a) => format!("[IPv6:{a}]"),
    }
}

/// The EHLO argument made safe to place in a header: anything but letters, digits and `.-_:[]` becomes `_`,
/// and it is cut to 255 characters.
fn clean_helo(helo: &str) -> String {
    helo.chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_:[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The Received field, folded, ending in CRLF:
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///         by mx.example.test (tern) with ESMTPSA id 01J...
///         for <rcpt@example.test>; Sat, 28 Nov 2026 13:26:49 +0000
/// ```
pub fn received_header(info: &ReceivedInfo<'_>) -> String {
    let mut h = format!(
        "Received: from {} ({})\r\n\tby {} (tern) with {} id {}",
        clean_helo(info.helo),
        address_literal(info.peer),
        info.hostname,
        info.protocol.name(),
        info.id,
    );
    match info.single_recipient {
        Some(r) => {
            h.push_str("\r\n\tfor <");
            h.push_str(&r.replace(['\r', '\n', '>'], ""));
            h.push_str(">; ");
        }
        None => h.push_str(";\r\n\t"),
    }
    h.push_str(&rfc5322_date(info.time));
    h.push_str("\r\n");
    h
}

/// What [`scan_headers`] found in the header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderScan {
    /// Received fields.
    pub received: usize,
    /// A Message-ID field is present.
    pub has_message_id: bool,
    /// A Date field is present.
    pub has_date: bool,
}

/// Scans the header section of `msg`: the lines up to the first empty line, or up to the first line that is
/// neither a field (`name:`) nor a continuation (starts with space or tab). Field names are case-insensitive.
pub fn scan_headers(msg: &[u8]) -> HeaderScan {
    let mut scan = HeaderScan::default();
    for line in msg.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            break;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
            break;
        }
        if name.eq_ignore_ascii_case(b"received") {
            scan.received += 1;
        } else if name.eq_ignore_ascii_case(b"message-id") {
            scan.has_message_id = true;
        } else if name.eq_ignore_ascii_case(b"date") {
            scan.has_date = true;
        }
    }
    scan
}

/// The message as it is queued: `received` (a whole field with its CRLF), then `Message-ID: <id@hostname>`
/// and `Date:` when the header section lacks them, then the message as received.
pub fn prepare_message(
    msg: &[u8],
    scan: &HeaderScan,
    received: &str,
    id: &str,
    hostname: &str,
    now: SystemTime,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + received.len() + 160);
    out.extend_from_slice(received.as_bytes());
    if !scan.has_message_id {
        out.extend_from_slice(format!("Message-ID: <{id}@{hostname}>\r\n").as_bytes());
    }
    if !scan.has_date {
        out.extend_from_slice(format!("Date: {}\r\n", rfc5322_date(now)).as_bytes());
    }
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn protocol_names_follow_rfc3848_and_rfc6531() {
        let p = |esmtp, tls, auth, utf8| {
            Protocol {
                esmtp,
                tls,
                auth,
                utf8,
            }
            .name()
        };
        assert_eq!(p(false, true, true, false), "SMTP");
        assert_eq!(p(true, false, false, false), "ESMTP");
        assert_eq!(p(true, true, false, false), "ESMTPS");
        assert_eq!(p(true, false, true, false), "ESMTPA");
        assert_eq!(p(true, true, true, false), "ESMTPSA");
        assert_eq!(p(true, true, true, true), "UTF8SMTPSA");
    }

    #[test]
    fn received_header_has_every_clause() {
        let info = ReceivedInfo {
            helo: "client.example",
            peer: "::ffff:192.0.2.1".parse().unwrap(),
            hostname: "mx.example.test",
            protocol: Protocol {
                esmtp: true,
                tls: true,
                auth: true,
                utf8: false,
            },
            id: "01ABC",
            single_recipient: Some("r@example.test"),
            time: at(1_795_872_409),
        };
        assert_eq!(
            received_header(&info),
            "Received: from client.example ([192.0.2.1])\r\n\tby mx.example.test (tern) with ESMTPSA id 01ABC\r\n\
             \tfor <r@example.test>; Sat, 28 Nov 2026 13:26:49 +0000\r\n"
        );
        let many = ReceivedInfo {
            helo: "evil (x); y",
            peer: "2001:db8::1".parse().unwrap(),
            single_recipient: None,
            ..info
        };
        let h = received_header(&many);
        assert!(
            h.starts_with("Received: from evil__x___y ([IPv6:2001:db8::1])\r\n"),
            "{h}"
        );
        assert!(
            h.ends_with("id 01ABC;\r\n\tSat, 28 Nov 2026 13:26:49 +0000\r\n"),
            "{h}"
        );
    }

    #[test]
    fn scan_only_reads_the_header_section() {
        let msg = b"Received: a\r\nreceived: b\r\n\tfolded\r\nSubject: x\r\n\r\nMessage-ID: <body@x>\r\nDate: no\r\n";
        let s = scan_headers(msg);
        assert_eq!(
            s,
            HeaderScan {
                received: 2,
                has_message_id: false,
                has_date: false
            }
        );
        let s = scan_headers(b"MESSAGE-ID: <a@b>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody");
        assert!(s.has_message_id && s.has_date);
        let s = scan_headers(b"not a header line\r\nDate: x\r\n");
        assert_eq!(s, HeaderScan::default());
        assert_eq!(scan_headers(b"").received, 0);
    }

    #[test]
    fn prepare_adds_only_missing_fields() {
        let msg = b"Subject: hi\r\n\r\nbody\r\n";
        let out = prepare_message(
            msg,
            &scan_headers(msg),
            "Received: x\r\n",
            "01ID",
            "h.test",
            at(0),
        );
        assert_eq!(
            out,
            b"Received: x\r\nMessage-ID: <01ID@h.test>\r\nDate: Thu, 1 Jan 1970 00:00:00 +0000\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        let msg = b"Message-Id: <a@b>\r\nDate: y\r\n\r\n";
        let out = prepare_message(
            msg,
            &scan_headers(msg),
            "Received: x\r\n",
            "01ID",
            "h.test",
            at(0),
        );
        assert_eq!(out, b"Received: x\r\nMessage-Id: <a@b>\r\nDate: y\r\n\r\n");
    }
}
