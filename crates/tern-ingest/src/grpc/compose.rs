//! From a `SendRequest`'s content to the bytes that are queued, and the addresses its headers name.
//!
//! * [`compose`]: a `ComposedMessage` built into MIME with mail-builder. Bcc addresses are envelope
//!   recipients only and never written. The layout is the usual one: `multipart/alternative` for text and
//!   HTML, `multipart/related` around the HTML and its inline parts (those with a `content_id`), and
//!   `multipart/mixed` around all that and the attachments.
//! * [`raw`]: an RFC 5322 message as given, line endings made CRLF (a bare CR or a bare LF becomes CRLF),
//!   checked to be a message (mail-parser must parse it, it must start with a header field and have a
//!   non-blank body) that can be sent as it is: no NUL octet and no line over 998 octets (RFC 5322 2.1.1,
//!   RFC 5321 4.5.3.1.6), as SMTP submission refuses them (`554 5.6.0`). Such a message is refused naming
//!   the line, not folded or re-encoded: rewriting a signed (DKIM) message would break its signature, and
//!   the client is the one that can encode the part properly. Message-ID and Date are added when missing
//!   (RFC 6409 sections 8.2 and 8.3, as the SMTP side does). When the envelope is taken from the headers,
//!   the Bcc field is removed.
//!
//! Both return the From and recipient header addresses so that the caller can derive the envelope.

use std::time::SystemTime;

use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use mail_parser::MessageParser;
use tern_core::Mailbox;
use tern_proto::v1::{Attachment, ComposedMessage};

use super::validate::{FieldError, header_address, header_name, no_line_breaks};
use crate::smtp::received::{prepare_message, scan_headers};

/// A message ready to queue, with the addresses of its header fields.
#[derive(Clone, Debug)]
pub struct Built {
    /// The message (CRLF line endings).
    pub body: Vec<u8>,
    /// The first address of From, if known.
    pub from: Option<Mailbox>,
    /// Every address of To, Cc and Bcc, in that order, each with the field path it came from.
    pub recipients: Vec<(String, Mailbox)>,
}

/// Header fields that the structured fields of `ComposedMessage` set.
const STRUCTURED: &[(&str, &str)] = &[
    ("from", "from"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
    ("reply-to", "reply_to"),
    ("subject", "subject"),
];

/// Header fields that describe the MIME structure, which tern writes itself.
const MIME_FIELDS: &[&str] = &[
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
];

/// Builds a `ComposedMessage` into MIME. `message_id` (without angle brackets) is used unless the caller
/// set a Message-ID header; Date is the current time unless set.
pub fn compose(c: &ComposedMessage, message_id: &str) -> Result<Built, FieldError> {
    if c.from.trim().is_empty() {
        return Err(FieldError::new("composed.from", "required"));
    }
    let (from_name, from) = header_address("composed.from", &c.from)?;
    let mut recipients = Vec::new();
    let mut to = Vec::new();
    let mut cc = Vec::new();
    for (field, list, mut out) in [
        ("to", &c.to, Some(&mut to)),
        ("cc", &c.cc, Some(&mut cc)),
        ("bcc", &c.bcc, None),
    ] {
        for (i, text) in list.iter().enumerate() {
            let path = format!("composed.{field}[{i}]");
            let (name, mailbox) = header_address(&path, text)?;
            if let Some(out) = out.as_mut() {
                out.push(Address::new_address(name, mailbox.to_string()));
            }
            recipients.push((path, mailbox));
        }
    }
    no_line_breaks("composed.subject", &c.subject)?;
    if c.text_body.is_empty() && c.html_body.is_empty() && c.attachments.is_empty() {
        return Err(FieldError::new(
            "composed",
            "empty body: set text_body, html_body or attachments",
        ));
    }

    let mut builder = MessageBuilder::new().from(Address::new_address(from_name, from.to_string()));
    if !to.is_empty() {
        builder = builder.to(Address::new_list(to));
    }
    if !cc.is_empty() {
        builder = builder.cc(Address::new_list(cc));
    }
    if !c.reply_to.trim().is_empty() {
        let (name, mailbox) = header_address("composed.reply_to", &c.reply_to)?;
        builder = builder.reply_to(Address::new_address(name, mailbox.to_string()));
    }
    if !c.subject.is_empty() {
        builder = builder.subject(c.subject.as_str());
    }

    // Extra headers, in name order so that the output does not depend on the map's order.
    let mut extra: Vec<(&String, &String)> = c.headers.iter().collect();
    extra.sort();
    let mut own_message_id = false;
    for (name, value) in extra {
        let path = format!("composed.headers[{name:?}]");
        header_name(&path, name)?;
        no_line_breaks(&path, value)?;
        let lower = name.to_ascii_lowercase();
        if let Some((_, field)) = STRUCTURED.iter().find(|(h, _)| *h == lower) {
            return Err(FieldError::new(path, format!("set it with composed.{field}")));
        }
        if MIME_FIELDS.contains(&lower.as_str()) {
            return Err(FieldError::new(
                path,
                "written by tern from the message structure",
            ));
        }
        // mail-builder recognises these two by their exact spelling and then does not add its own.
        let (name, value): (String, HeaderType<'_>) = match lower.as_str() {
            "message-id" => {
                own_message_id = true;
                ("Message-ID".into(), Raw::new(value.as_str()).into())
            }
            "date" => ("Date".into(), Raw::new(value.as_str()).into()),
            _ => (name.clone(), Text::new(value.as_str()).into()),
        };
        builder = builder.header(name, value);
    }
    if !own_message_id {
        builder = builder.message_id(message_id);
    }

    builder = builder.body(mime_body(c)?);
    let body = builder
        .write_to_vec()
        .map_err(|e| FieldError::new("composed", format!("cannot build the message: {e}")))?;
    Ok(Built {
        body,
        from: Some(from),
        recipients,
    })
}

/// The MIME tree of the message's bodies and attachments.
fn mime_body(c: &ComposedMessage) -> Result<MimePart<'_>, FieldError> {
    let mut inline = Vec::new();
    let mut attached = Vec::new();
    for (i, a) in c.attachments.iter().enumerate() {
        let part = attachment(&format!("composed.attachments[{i}]"), a)?;
        if a.content_id.is_empty() {
            attached.push(part);
        } else {
            inline.push(part);
        }
    }
    let text = (!c.text_body.is_empty()).then(|| MimePart::new("text/plain", c.text_body.as_str()));
    let mut html = (!c.html_body.is_empty()).then(|| MimePart::new("text/html", c.html_body.as_str()));
    if !inline.is_empty() {
        match html.take() {
            Some(h) => {
                let mut parts = vec![h];
                parts.append(&mut inline);
                html = Some(MimePart::new("multipart/related", parts));
            }
            // Inline parts with nothing to show them in are plain attachments.
            None => attached.append(&mut inline),
        }
    }
    let content = match (text, html) {
        (Some(t), Some(h)) => Some(MimePart::new("multipart/alternative", vec![t, h])),
        (Some(one), None) | (None, Some(one)) => Some(one),
        (None, None) => None,
    };
    Ok(match (content, attached.is_empty()) {
        (Some(content), true) => content,
        (content, _) => {
            let mut parts: Vec<MimePart<'_>> = content.into_iter().collect();
            parts.append(&mut attached);
            MimePart::new("multipart/mixed", parts)
        }
    })
}

/// One attachment or inline part.
fn attachment<'a>(path: &str, a: &'a Attachment) -> Result<MimePart<'a>, FieldError> {
    no_line_breaks(&format!("{path}.filename"), &a.filename)?;
    no_line_breaks(&format!("{path}.content_id"), &a.content_id)?;
    let content_type = if a.content_type.is_empty() {
        "application/octet-stream"
    } else {
        mime_type(&format!("{path}.content_type"), &a.content_type)?
    };
    if a.filename.is_empty() && a.content_id.is_empty() {
        return Err(FieldError::new(
            format!("{path}.filename"),
            "required (or a content_id for an inline part)",
        ));
    }
    let part = MimePart::new(content_type, a.content.as_slice());
    if a.content_id.is_empty() {
        return Ok(part.attachment(a.filename.as_str()));
    }
    let cid = a.content_id.trim_start_matches('<').trim_end_matches('>');
    if cid.is_empty() || !cid.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(FieldError::new(
            format!("{path}.content_id"),
            format!("invalid content id {:?}", a.content_id),
        ));
    }
    let mut part = part.inline().cid(cid);
    if !a.filename.is_empty() {
        // Keeps the name for clients that show inline parts as files too.
        part = part.header("Content-Description", Text::new(a.filename.as_str()));
    }
    Ok(part)
}

/// A bare MIME type, `type/subtype` made of RFC 2045 token characters (parameters are not accepted).
fn mime_type<'a>(path: &str, t: &'a str) -> Result<&'a str, FieldError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
    };
    match t.split_once('/') {
        Some((a, b)) if token(a) && token(b) => Ok(t),
        _ => Err(FieldError::new(
            path,
            format!("invalid MIME type {t:?}: expected type/subtype"),
        )),
    }
}

/// Checks a raw RFC 5322 message and prepares it for the queue. With `from_headers`, the From, To, Cc and
/// Bcc addresses are read (an unparseable one is an error) and Bcc is removed from the message.
/// Message-ID (`<message_id@hostname>`) and Date are added when missing.
pub fn raw(
    raw: &[u8],
    from_headers: bool,
    message_id: &str,
    hostname: &str,
    now: SystemTime,
) -> Result<Built, FieldError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(FieldError::new("raw", "empty message"));
    }
    let msg = tern_smtp::normalize_line_endings(raw);
    check_lines(&msg)?;
    let header_len = header_section_len(&msg).ok_or_else(|| {
        FieldError::new(
            "raw",
            "not an RFC 5322 message: it must start with a header field",
        )
    })?;
    if msg[header_len..].iter().all(u8::is_ascii_whitespace) {
        return Err(FieldError::new(
            "raw",
            "empty body: the message has headers but no body",
        ));
    }
    let parsed = MessageParser::default()
        .parse(&msg)
        .ok_or_else(|| FieldError::new("raw", "not an RFC 5322 message: it cannot be parsed"))?;
    let mut built = Built {
        body: Vec::new(),
        from: None,
        recipients: Vec::new(),
    };
    if from_headers {
        for header in parsed.headers() {
            let name = header.name();
            let field = ["From", "To", "Cc", "Bcc"]
                .into_iter()
                .find(|f| f.eq_ignore_ascii_case(name));
            let Some(field) = field else { continue };
            if field == "From" && built.from.is_some() {
                continue;
            }
            let start = usize::try_from(header.offset_start()).unwrap_or(usize::MAX);
            let end = usize::try_from(header.offset_end()).unwrap_or(usize::MAX);
            let text = msg
                .get(start..end)
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            let path = format!("raw.{field}");
            let invalid = |a: &str| FieldError::new(&path, format!("invalid address {a:?}"));
            let Some(list) = header.value().as_address() else {
                if text.is_empty() || field == "Bcc" {
                    continue;
                }
                return Err(invalid(&text));
            };
            for addr in list.iter() {
                // A name with no address (`To: x`) is not a recipient anyone can deliver to.
                let Some(a) = addr.address() else {
                    return Err(invalid(addr.name().unwrap_or(&text)));
                };
                let mailbox = Mailbox::parse(a, true).map_err(|_| invalid(a))?;
                if field == "From" {
                    built.from.get_or_insert(mailbox);
                } else {
                    built.recipients.push((path.clone(), mailbox));
                }
            }
        }
    }
    let msg = if from_headers {
        remove_field(&msg, header_len, b"bcc")
    } else {
        msg
    };
    let scan = scan_headers(&msg);
    built.body = prepare_message(&msg, &scan, "", message_id, hostname, now);
    Ok(built)
}

/// The longest line RFC 5322 2.1.1 allows, CRLF excluded (RFC 5321 4.5.3.1.6's 1000 with it).
pub const MAX_LINE: usize = 998;

/// Refuses a NUL octet or a line over [`MAX_LINE`] octets, naming the (1-based) line. `msg` has CRLF line
/// endings only.
fn check_lines(msg: &[u8]) -> Result<(), FieldError> {
    for (index, line) in msg.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let number = index + 1;
        if let Some(column) = line.iter().position(|&b| b == 0) {
            return Err(FieldError::new(
                "raw",
                format!(
                    "line {number}: NUL octet at column {} (not allowed in a message, RFC 5322 2.1.1)",
                    column + 1
                ),
            ));
        }
        if line.len() > MAX_LINE {
            return Err(FieldError::new(
                "raw",
                format!(
                    "line {number}: {} octets long, over the {MAX_LINE} allowed (RFC 5322 2.1.1); fold the \
                     header field or encode the part (quoted-printable or base64)",
                    line.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The length of the header section (up to and including the CRLF of its last field, not the empty line),
/// or `None` when the message does not start with a header field. `msg` has CRLF line endings.
fn header_section_len(msg: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let mut fields = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(msg.len(), |i| pos + i + 2);
        let line = &msg[pos..end];
        let content = line.strip_suffix(b"\r\n").unwrap_or(line);
        if content.is_empty() {
            break;
        }
        if matches!(content[0], b' ' | b'\t') {
            if fields == 0 {
                return None;
            }
        } else {
            let colon = content.iter().position(|&b| b == b':')?;
            let name = &content[..colon];
            if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                return None;
            }
            fields += 1;
        }
        pos = end;
    }
    (fields > 0).then_some(pos)
}

/// `msg` without every field named `name` (lower-case; with its continuation lines) in the first
/// `header_len` bytes.
fn remove_field(msg: &[u8], header_len: usize, name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len());
    let mut pos = 0;
    let mut skipping = false;
    while pos < header_len {
        let end = msg[pos..header_len]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(header_len, |i| pos + i + 2);
        let line = &msg[pos..end];
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            skipping = line
                .iter()
                .position(|&b| b == b':')
                .is_some_and(|c| line[..c].trim_ascii_end().eq_ignore_ascii_case(name));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    out.extend_from_slice(&msg[header_len..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;
    use std::time::{Duration, UNIX_EPOCH};

    fn composed() -> ComposedMessage {
        ComposedMessage {
            from: "Ann <ann@a.test>".into(),
            to: vec!["bob@b.test".into(), "\"Cy D\" <cy@c.test>".into()],
            cc: vec!["dee@d.test".into()],
            bcc: vec!["hidden@e.test".into()],
            subject: "Hello".into(),
            text_body: "plain".into(),
            ..Default::default()
        }
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn composed_text_message_has_headers_and_no_bcc() {
        let b = compose(&composed(), "01ID@h.test").unwrap();
        let t = text(&b.body);
        assert!(
            t.contains("From: \"Ann\" <ann@a.test>\r\n") || t.contains("From: Ann <ann@a.test>\r\n"),
            "{t}"
        );
        assert!(t.contains("Message-ID: <01ID@h.test>\r\n"), "{t}");
        assert!(t.contains("Subject: Hello\r\n"), "{t}");
        assert!(t.contains("Date: "), "{t}");
        assert!(!t.to_lowercase().contains("hidden"), "{t}");
        let rcpts: Vec<_> = b.recipients.iter().map(|(p, m)| format!("{p}={m}")).collect();
        assert_eq!(
            rcpts,
            [
                "composed.to[0]=bob@b.test",
                "composed.to[1]=cy@c.test",
                "composed.cc[0]=dee@d.test",
                "composed.bcc[0]=hidden@e.test"
            ]
        );
        assert_eq!(b.from.unwrap().to_string(), "ann@a.test");
    }

    #[test]
    fn composed_structure_with_html_inline_and_attachments() {
        let mut c = composed();
        c.html_body = "<img src=\"cid:logo\">".into();
        c.attachments = vec![
            Attachment {
                filename: "a.pdf".into(),
                content_type: "application/pdf".into(),
                content: b"%PDF".to_vec(),
                content_id: String::new(),
            },
            Attachment {
                filename: "logo.png".into(),
                content_type: "image/png".into(),
                content: vec![0, 1, 2],
                content_id: "logo".into(),
            },
        ];
        let b = compose(&c, "01ID@h.test").unwrap();
        let parsed = MessageParser::default().parse(&b.body).unwrap();
        let ct = parsed.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("mixed")));
        let t = text(&b.body);
        for needle in [
            "multipart/alternative",
            "multipart/related",
            "Content-ID: <logo>",
            "filename=\"a.pdf\"",
            "application/pdf",
        ] {
            assert!(t.contains(needle), "{needle} missing in\n{t}");
        }
        assert_eq!(parsed.attachment_count(), 2);
    }

    #[test]
    fn composed_errors_name_the_field() {
        type Change = Box<dyn Fn(&mut ComposedMessage)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c.to[1] = "x".into()),
                "composed.to[1]: invalid address \"x\"",
            ),
            (Box::new(|c| c.from = String::new()), "composed.from: required"),
            (
                Box::new(|c| c.subject = "hi\r\nBcc: x@y.test".into()),
                "composed.subject: CR or LF",
            ),
            (
                Box::new(|c| {
                    c.headers.insert("X-A".into(), "v\nX-B: w".into());
                }),
                "composed.headers[\"X-A\"]: CR or LF",
            ),
            (
                Box::new(|c| {
                    c.headers.insert("Content-Type".into(), "text/html".into());
                }),
                "composed.headers[\"Content-Type\"]: written by tern",
            ),
            (
                Box::new(|c| {
                    c.headers.insert("bcc".into(), "x@y.test".into());
                }),
                "composed.headers[\"bcc\"]: set it with composed.bcc",
            ),
            (Box::new(|c| c.text_body = String::new()), "composed: empty body"),
            (
                Box::new(|c| {
                    c.attachments.push(Attachment {
                        filename: "a".into(),
                        content_type: "text/plain; x=y".into(),
                        ..Default::default()
                    })
                }),
                "composed.attachments[0].content_type: invalid MIME type",
            ),
        ];
        for (change, want) in cases {
            let mut c = composed();
            change(&mut c);
            let err = compose(&c, "id@h").unwrap_err().to_string();
            assert!(err.starts_with(want), "want {want:?}, got {err:?}");
        }
    }

    #[test]
    fn raw_messages_get_bcc_removed_and_missing_fields_added() {
        let msg =
            b"From: Ann <ann@a.test>\nTo: bob@b.test, Cy <cy@c.test>\nBcc: hidden@e.test,\n  other@e.test\n\
                    Subject: x\n\nBcc: not-a-header@body.test\n";
        let b = raw(msg, true, "01ID", "h.test", UNIX_EPOCH + Duration::from_secs(0)).unwrap();
        let t = text(&b.body);
        assert!(
            t.starts_with("Message-ID: <01ID@h.test>\r\nDate: Thu, 1 Jan 1970 00:00:00 +0000\r\nFrom: Ann"),
            "{t}"
        );
        assert!(!t.contains("hidden") && !t.contains("other@e.test"), "{t}");
        assert!(t.contains("\r\n\r\nBcc: not-a-header@body.test\r\n"), "{t}");
        assert_eq!(b.from.unwrap().to_string(), "ann@a.test");
        let r: Vec<_> = b.recipients.iter().map(|(_, m)| m.to_string()).collect();
        assert_eq!(r, ["bob@b.test", "cy@c.test", "hidden@e.test", "other@e.test"]);
        // With an explicit envelope the message is left as it is, Bcc included.
        let b = raw(msg, false, "01ID", "h.test", SystemTime::now()).unwrap();
        assert!(text(&b.body).contains("Bcc: hidden@e.test"));
    }

    #[test]
    fn raw_checks() {
        let now = SystemTime::now();
        assert_eq!(
            raw(b"  \r\n", true, "i", "h", now).unwrap_err().to_string(),
            "raw: empty message"
        );
        assert!(
            raw(b"just text\r\n", true, "i", "h", now)
                .unwrap_err()
                .message
                .contains("header field")
        );
        let e = raw(b"From: a@a.test\r\nTo: x\r\n\r\nhi", true, "i", "h", now).unwrap_err();
        assert_eq!(e.path, "raw.To", "{e}");
        let kept = raw(
            b"Message-ID: <m@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nTo: b@b.test\r\n\r\nhi",
            true,
            "i",
            "h",
            now,
        )
        .unwrap();
        assert!(kept.body.starts_with(b"Message-ID: <m@x>\r\nDate: Mon"));
        assert!(kept.from.is_none());
    }

    #[test]
    fn raw_lines_over_998_octets_or_with_nul_are_refused_naming_the_line() {
        let now = SystemTime::now();
        let head = b"From: a@a.test\r\nTo: b@b.test\r\n\r\n".to_vec();
        let mut fits = head.clone();
        fits.extend(std::iter::repeat_n(b'x', 998));
        fits.extend_from_slice(b"\r\n");
        assert!(raw(&fits, true, "i", "h", now).is_ok());
        let mut long = head.clone();
        long.extend_from_slice(b"ok\n");
        long.extend(std::iter::repeat_n(b'x', 999));
        let e = raw(&long, true, "i", "h", now).unwrap_err();
        assert_eq!(e.path, "raw");
        assert!(e.message.starts_with("line 5: 999 octets long"), "{e}");
        let mut nul = head;
        nul.extend_from_slice(b"a\rb\0c\r\n");
        let e = raw(&nul, true, "i", "h", now).unwrap_err();
        assert!(e.message.starts_with("line 5: NUL octet at column 2"), "{e}");
    }
}
