//! Handing a made report to one `rua` URI: `mailto:` as a mail queued into tern's own queue (DKIM-signed
//! with the reporting domain's `[[dkim]]` keys when the reporter has them, RFC 8460 §3), `https:` as a
//! POST of the gzip; each tried [`ReporterOptions::attempts`](super::ReporterOptions) times.

use tern_core::time::now_ms;
use tern_core::{Envelope, Mailbox, MessageId, Recipient, ReversePath};
use tern_dkim::SharedSigners;
use tern_queue::NewMessage;
use tracing::{debug, info, warn};

use super::https::PostError;
use super::{Made, TlsReporter, uri_text};
use crate::report::{ReportMail, ReportUri, build_report_mail};

/// A failed offer to one URI, and whether trying again (now, or at a later run) may help.
pub(super) struct Failure {
    pub(super) text: String,
    pub(super) retry: bool,
}

impl TlsReporter {
    /// Offers the report to one URI, [`ReporterOptions::attempts`](super::ReporterOptions) times at most.
    /// `Ok` once the URI took it: the mail is in the queue (durably, as any enqueue), or the collector
    /// answered 2xx.
    pub(super) async fn deliver(&self, made: &Made, uri: &ReportUri) -> Result<(), Failure> {
        let attempts = self.inner.options.attempts.max(1);
        let mut attempt = 1;
        loop {
            let result = match uri {
                ReportUri::Mailto(address) => self.enqueue(made, address).await,
                ReportUri::Https(url) => self
                    .inner
                    .poster
                    .post(url, made.gz.clone())
                    .await
                    .map(|status| debug!(url = %url, status, "TLS report posted"))
                    .map_err(|e| Failure {
                        text: e.to_string(),
                        retry: !matches!(e, PostError::Url(_)),
                    }),
            };
            let failure = match result {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if !failure.retry || attempt >= attempts || !self.pause().await {
                return Err(failure);
            }
            warn!(
                domain = %made.domain, uri = %uri_text(uri), attempt, error = %failure.text,
                "offering the TLS report failed; trying again"
            );
            attempt += 1;
        }
    }

    /// Waits [`ReporterOptions::retry_pause`](super::ReporterOptions); `false` when a shutdown came first.
    async fn pause(&self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(self.inner.options.retry_pause) => true,
        }
    }

    /// Queues the report mail to `address` into tern's own queue, signed when there are keys for it.
    async fn enqueue(&self, made: &Made, address: &str) -> Result<(), Failure> {
        let permanent = |text: String| Failure { text, retry: false };
        let rcpt = Mailbox::parse(address, true)
            .map_err(|e| permanent(format!("{address:?} is not an address: {e}")))?;
        let submitter = &self.inner.submitter;
        let from = self.inner.from.to_string();
        let body = build_report_mail(&ReportMail {
            from: &from,
            to: address,
            policy_domain: &made.domain,
            submitter: &submitter.domain,
            report_id: &made.id,
            filename: &made.filename,
            report_gz: &made.gz,
            date: now_ms() / 1000,
        })
        .map_err(|e| permanent(e.to_string()))?;
        let body = match &self.dkim {
            Some(keys) => sign(keys, body)?,
            None => body,
        };
        let mut envelope = Envelope::new(
            ReversePath::Mailbox(self.inner.from.clone()),
            vec![Recipient::new(rcpt.clone())],
        );
        envelope.smtputf8 = !rcpt.is_ascii();
        // The key makes a repeated write (an outage that may have stored it, a retry at a later run) one
        // message. A partial report has an id of its own, so the whole day's report is not taken for it.
        let key = format!("tern:tlsrpt:{}:{}", made.id, address.to_ascii_lowercase());
        let mut message = NewMessage::new(envelope, body)
            .with_idempotency_key(key)
            .with_tag("tlsrpt", made.domain.clone());
        message.id = Some(MessageId::new());
        match self.inner.queue.enqueue(message).await {
            Ok(receipt) => {
                info!(
                    day = %made.day, domain = %made.domain, to = %address, message_id = %receipt.message,
                    duplicate = receipt.duplicate, "TLS report mail queued"
                );
                Ok(())
            }
            Err(e) => Err(Failure {
                retry: e.is_unavailable(),
                text: format!("queueing the report mail: {e}"),
            }),
        }
    }
}

/// Signs a report mail with the keys of its From domain (the reporting address's), as ingest signs
/// submissions; unsigned when that domain has no key. A key that fails to sign fails the offer (a later
/// attempt, after the keys are reloaded, may sign): report mail that should be signed is not sent unsigned.
fn sign(keys: &SharedSigners, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
    match keys.current().sign(&body) {
        Ok(Some(signed)) => {
            debug!(
                domain = %signed.domain, selectors = %signed.selectors.join(","),
                "TLS report mail DKIM-signed"
            );
            Ok(signed.prepend_to(&body))
        }
        Ok(None) => Ok(body),
        Err(e) => Err(Failure {
            text: format!("DKIM-signing the report mail: {e}"),
            retry: true,
        }),
    }
}
