//! Sandbox delivery (`delivery.sandbox_dir`): instead of looking MX hosts up and connecting, a job's message
//! is written into a directory, the way a local delivery agent writes into a mailbox, and the attempt ends
//! with the replies a successful SMTP transaction would have given, so that the worker records it like any
//! delivery (events, stats, DSNs).
//!
//! The file holds the envelope as headers (`Return-Path: <sender>`, `<>` for the null sender, then one
//! `Delivered-To: recipient` per recipient delivered, in the style of Postfix's `local` and Dovecot's LDA),
//! then the message bytes exactly as queued. The headers take the message's own line ending.
//!
//! Names are fixed per job, so that a job delivered again (after a crash between the write and the
//! completion: delivery is at least once) overwrites its own file, and two workers delivering two jobs of
//! one message never race for a name: the message's first job (its first recipient domain) is written to
//! `<message id>.eml`, each further job to `<message id>.<domain>.eml`.
//!
//! A file is written under a temporary name in the same directory, synced, renamed into place, and the
//! directory synced, before the job is completed. A write that fails takes a 451 4.3.0 naming the path
//! and the error: the job is deferred, never lost.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tern_core::{JobId, Mailbox, ReversePath};
use tern_queue::ClaimedJob;
use tern_smtp::Reply;
use tracing::{info, warn};

use crate::smtp::RecipientReply;

/// The longest domain part of a file name: with the message id and the suffixes, a name stays within the
/// 255 bytes file systems allow.
const MAX_DOMAIN_IN_NAME: usize = 200;

/// Where sandbox deliveries go.
#[derive(Clone, Debug)]
pub(crate) struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// The sandbox in `dir`, created now if missing. A directory that cannot be created does not stop the
    /// worker: each write tries again, and until one succeeds the jobs are deferred.
    pub(crate) fn open(dir: &Path) -> Sandbox {
        match std::fs::create_dir_all(dir) {
            Ok(()) => info!(
                dir = %dir.display(),
                "sandbox delivery: messages are written to files, nothing is sent"
            ),
            Err(e) => warn!(
                dir = %dir.display(), error = %e,
                "sandbox directory cannot be created: deliveries are deferred until it can"
            ),
        }
        Sandbox {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes the job's message for its pending recipients. One reply per pending recipient, all alike:
    /// `250 2.0.0 written to <path>`, or `451 4.3.0` naming the path and the error.
    pub(crate) async fn deliver(&self, cj: &ClaimedJob) -> Vec<(u32, RecipientReply)> {
        let job = &cj.job;
        let pending: Vec<(u32, &Mailbox)> = job.pending().map(|(i, r)| (i, &r.recipient.address)).collect();
        let path = self.dir.join(file_name(job.id, &job.domain));
        let headers = envelope_headers(
            &job.envelope.sender,
            pending.iter().map(|(_, m)| *m),
            line_ending(&cj.body),
        );
        let (dir, target, body) = (self.dir.clone(), path.clone(), cj.body.clone());
        let temp = self.dir.join(format!(
            ".{}.{}.{:016x}.tmp",
            job.id.message,
            job.id.index,
            rand::random::<u64>()
        ));
        let written =
            tokio::task::spawn_blocking(move || write_durably(&dir, &temp, &target, &[&headers, &body]))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
        let reply = match written {
            Ok(()) => {
                info!(
                    message_id = %job.id.message, job = %job.id, sender = %job.envelope.sender,
                    domain = %job.domain, recipients = pending.len(), path = %path.display(),
                    "sandbox delivery: message written"
                );
                Reply::new(250, "2.0.0", format!("written to {}", path.display()))
            }
            Err(e) => {
                warn!(
                    message_id = %job.id.message, job = %job.id, sender = %job.envelope.sender,
                    domain = %job.domain, path = %path.display(), error = %e,
                    "sandbox delivery: write failed, the job is deferred"
                );
                Reply::new(
                    451,
                    "4.3.0",
                    format!("sandbox write to {} failed: {e}", path.display()),
                )
            }
        };
        pending
            .iter()
            .map(|(i, _)| (*i, RecipientReply::Local(reply.clone())))
            .collect()
    }
}

/// The file a job's message goes to: `<message id>.eml` for the message's first job, and
/// `<message id>.<domain>.eml` for the others (one job per recipient domain).
pub(crate) fn file_name(job: JobId, domain: &str) -> String {
    if job.index == 0 {
        return format!("{}.eml", job.message);
    }
    let mut safe = String::with_capacity(domain.len());
    for c in domain.chars() {
        if safe.len() + c.len_utf8() > MAX_DOMAIN_IN_NAME {
            break;
        }
        // A domain never holds a path separator, but the name must stay one component whatever it holds.
        safe.push(if c == '/' || c == '\\' || c.is_control() {
            '_'
        } else {
            c
        });
    }
    format!("{}.{safe}.eml", job.message)
}

/// The envelope as a local delivery agent writes it before the message: `Return-Path: <sender>` and one
/// `Delivered-To:` per recipient, each line ended with `eol`.
pub(crate) fn envelope_headers<'a>(
    sender: &ReversePath,
    recipients: impl IntoIterator<Item = &'a Mailbox>,
    eol: &str,
) -> Vec<u8> {
    let mut out = format!("Return-Path: {}{eol}", one_line(&sender.to_string()));
    for r in recipients {
        out.push_str(&format!("Delivered-To: {}{eol}", one_line(&r.to_string())));
    }
    out.into_bytes()
}

/// The message's line ending: that of its first line (CRLF when it has none, as on the wire).
pub(crate) fn line_ending(message: &[u8]) -> &'static str {
    match message.iter().position(|&b| b == b'\n') {
        Some(i) if i == 0 || message[i - 1] != b'\r' => "\n",
        _ => "\r\n",
    }
}

/// A parsed address holds no line break; this keeps a header one line whatever it is given.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n', '\0'], " ")
}

/// Writes `parts` to `temp`, syncs it, renames it to `target` (replacing an older file) and syncs `dir`:
/// once this returns `Ok` the file survives a crash. The temporary file is removed when a step fails.
fn write_durably(dir: &Path, temp: &Path, target: &Path, parts: &[&[u8]]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(temp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(temp, target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_core::MessageId;

    fn mailbox(s: &str) -> Mailbox {
        s.parse().unwrap()
    }

    #[test]
    fn the_null_sender_is_an_empty_return_path() {
        let h = envelope_headers(&ReversePath::Null, [&mailbox("r@b.test")], "\r\n");
        assert_eq!(h, b"Return-Path: <>\r\nDelivered-To: r@b.test\r\n");
    }

    #[test]
    fn each_recipient_gets_its_delivered_to_in_order() {
        let sender = ReversePath::Mailbox(mailbox("s@a.test"));
        let rcpts = [
            mailbox("one@b.test"),
            mailbox("two@b.test"),
            mailbox("\"x y\"@b.test"),
        ];
        let h = envelope_headers(&sender, &rcpts, "\r\n");
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Return-Path: <s@a.test>\r\n\
             Delivered-To: one@b.test\r\n\
             Delivered-To: two@b.test\r\n\
             Delivered-To: \"x y\"@b.test\r\n"
        );
    }

    #[test]
    fn a_header_value_never_breaks_its_line() {
        let mut odd = mailbox("r@b.test");
        odd.local_part = "r\r\nBcc: x".into();
        let h = envelope_headers(&ReversePath::Null, [&odd], "\n");
        assert_eq!(h, b"Return-Path: <>\nDelivered-To: r  Bcc: x@b.test\n");
    }

    #[test]
    fn headers_take_the_message_line_ending() {
        assert_eq!(line_ending(b"Subject: x\r\n\r\nbody\r\n"), "\r\n");
        assert_eq!(line_ending(b"Subject: x\n\nbody\n"), "\n");
        assert_eq!(line_ending(b"\n"), "\n");
        assert_eq!(line_ending(b"no line end"), "\r\n");
        assert_eq!(line_ending(b""), "\r\n");
    }

    #[test]
    fn the_first_job_names_the_message_and_later_ones_add_their_domain() {
        let m = MessageId::new();
        assert_eq!(file_name(JobId::new(m, 0), "b.test"), format!("{m}.eml"));
        assert_eq!(file_name(JobId::new(m, 1), "c.test"), format!("{m}.c.test.eml"));
        assert_eq!(file_name(JobId::new(m, 2), "x/../y"), format!("{m}.x_.._y.eml"));
        let long = "a".repeat(300);
        assert_eq!(
            file_name(JobId::new(m, 1), &long),
            format!("{m}.{}.eml", "a".repeat(MAX_DOMAIN_IN_NAME))
        );
    }

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("made");
        let target = sub.join("m.eml");
        write_durably(&sub, &sub.join(".t1"), &target, &[b"head\r\n", b"body"]).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"head\r\nbody");
        write_durably(&sub, &sub.join(".t2"), &target, &[b"again"]).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"again");
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.eml")]);
    }

    #[test]
    fn a_write_below_a_regular_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let sub = file.join("sandbox");
        let err = write_durably(&sub, &sub.join(".t"), &sub.join("m.eml"), &[b"x"]).unwrap_err();
        assert!(err.to_string().contains("Not a directory"), "{err}");
    }
}
