//! The transcript hook: what a client tells an observer about its session (for tracing, or a live protocol
//! trace), and the masking that keeps credentials and message content out of it.
//!
//! Every command and every reply goes through the client's wire, which hands it to the hook. What the hook
//! sees is already safe to log: an AUTH command shows its mechanism, never its payload, and message data
//! shows as its size only.

use std::fmt;
use std::sync::Arc;

use tern_smtp::{Command, Reply};

/// What an AUTH payload is replaced with in a transcript.
pub const MASK: &str = "<masked>";

/// One event of a session, as a transcript hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranscriptEntry<'a> {
    /// A command as sent; shown without its CRLF and with an AUTH payload masked ([`CommandLine`]).
    Command(CommandLine<'a>),
    /// Message data went out; only its size (the octets given, before dot-stuffing) is passed on.
    Body {
        /// The size of the message.
        octets: usize,
    },
    /// A reply as read.
    Reply(&'a Reply),
    /// A TLS handshake completed (implicit TLS, or after STARTTLS): version, cipher and verification.
    Tls(&'a str),
    /// The connection failed (a timeout, the peer closed it, a socket or TLS error): nothing more will be
    /// read or written on it.
    Error(&'a str),
}

impl fmt::Display for TranscriptEntry<'_> {
    /// One line: `C: MAIL FROM:<a@b.test>`, `C: <body 120 octets>`, `S: 250 2.0.0 ok`, `TLS: TLSv1_3 ...`,
    /// `ERROR: timeout waiting for DATA`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranscriptEntry::Command(line) => write!(f, "C: {line}"),
            TranscriptEntry::Body { octets } => write!(f, "C: <body {octets} octets>"),
            TranscriptEntry::Reply(reply) => write!(f, "S: {reply}"),
            TranscriptEntry::Tls(desc) => write!(f, "TLS: {desc}"),
            TranscriptEntry::Error(what) => write!(f, "ERROR: {what}"),
        }
    }
}

/// An observer of a client's session. It is called inline, between writes and reads, so it must be quick.
pub trait Transcript: Send + Sync {
    /// Records one event.
    fn record(&self, entry: TranscriptEntry<'_>);
}

impl<F> Transcript for F
where
    F: Fn(TranscriptEntry<'_>) + Send + Sync,
{
    fn record(&self, entry: TranscriptEntry<'_>) {
        self(entry)
    }
}

/// A hook shared by the clients that use it.
pub type TranscriptHook = Arc<dyn Transcript>;

/// A command line as a transcript shows it: a command's wire form without the CRLF, with an AUTH payload
/// (the initial response, which carries the credentials) replaced by [`MASK`], or a line given as shown.
/// Formatted only when shown: every command of every session passes through the hook, and mostly no one
/// is looking. Its `Debug` form is its masked line too.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandLine<'a>(Shown<'a>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown<'a> {
    Command(&'a Command),
    Text(&'a str),
}

impl<'a> CommandLine<'a> {
    /// `command`, formatted when shown.
    pub fn command(command: &'a Command) -> Self {
        CommandLine(Shown::Command(command))
    }

    /// A line shown as given: one already masked (a SASL response, an `AUTH XOAUTH2` line), the lone
    /// terminating dot.
    pub fn text(line: &'a str) -> Self {
        CommandLine(Shown::Text(line))
    }
}

impl fmt::Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Shown::Command(Command::Auth {
                mechanism,
                initial_response: Some(_),
            }) => write!(f, "AUTH {mechanism} {MASK}"),
            Shown::Command(other) => other.fmt(f),
            Shown::Text(line) => f.write_str(line),
        }
    }
}

impl fmt::Debug for CommandLine<'_> {
    /// The masked line, quoted: a derived form would show an AUTH payload.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandLine({:?})", self.to_string())
    }
}

/// A hook that logs every entry through `tracing` at TRACE level, with the server's name and address.
pub fn tracing_transcript(server: &str, addr: std::net::SocketAddr) -> TranscriptHook {
    let server = server.to_string();
    Arc::new(move |entry: TranscriptEntry<'_>| {
        tracing::trace!(mx = %server, ip = %addr.ip(), line = %entry, "smtp");
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use base64::Engine as _;
    use tern_smtp::AuthMechanism;

    use super::*;

    fn command_line(command: &Command) -> String {
        CommandLine::command(command).to_string()
    }

    fn auth(initial_response: Option<&str>) -> Command {
        Command::Auth {
            mechanism: AuthMechanism::Plain,
            initial_response: initial_response.map(str::to_string),
        }
    }

    #[test]
    fn auth_plain_payload_is_masked() {
        let token = base64::engine::general_purpose::STANDARD.encode("\0tern\0s3cret");
        let line = command_line(&auth(Some(&token)));
        assert_eq!(line, "AUTH PLAIN <masked>");
        assert!(!line.contains(&token));
        let auth = auth(Some(&token));
        let shown = TranscriptEntry::Command(CommandLine::command(&auth)).to_string();
        assert_eq!(shown, "C: AUTH PLAIN <masked>");
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn the_debug_form_of_an_auth_command_is_masked_too() {
        let token = base64::engine::general_purpose::STANDARD.encode("\0tern\0s3cret");
        let auth = auth(Some(&token));
        let shown = format!("{:?}", TranscriptEntry::Command(CommandLine::command(&auth)));
        assert!(shown.contains("AUTH PLAIN <masked>"), "{shown}");
        assert!(!shown.contains(&token), "{shown}");
    }

    #[test]
    fn an_empty_auth_response_is_masked_too() {
        assert_eq!(command_line(&auth(Some(""))), "AUTH PLAIN <masked>");
    }

    #[test]
    fn auth_without_a_payload_is_shown_as_is() {
        assert_eq!(command_line(&auth(None)), "AUTH PLAIN");
        let login = Command::Auth {
            mechanism: AuthMechanism::Login,
            initial_response: None,
        };
        assert_eq!(command_line(&login), "AUTH LOGIN");
    }

    #[test]
    fn other_commands_are_shown_as_sent() {
        let mail = Command::Mail {
            from: tern_smtp::ReversePath::Mailbox("s@a.test".parse().unwrap()),
            params: Default::default(),
        };
        assert_eq!(command_line(&mail), "MAIL FROM:<s@a.test>");
        assert_eq!(
            command_line(&Command::Ehlo("tern.a.test".into())),
            "EHLO tern.a.test"
        );
        assert_eq!(command_line(&Command::Quit), "QUIT");
    }

    #[test]
    fn a_line_that_is_no_command_is_shown_as_given() {
        let entry = TranscriptEntry::Command(CommandLine::text("AHVzZXI= <masked>"));
        assert_eq!(entry.to_string(), "C: AHVzZXI= <masked>");
        assert_eq!(
            TranscriptEntry::Command(CommandLine::text(".")).to_string(),
            "C: ."
        );
    }

    #[test]
    fn body_is_summarised_by_size() {
        assert_eq!(
            TranscriptEntry::Body { octets: 1234 }.to_string(),
            "C: <body 1234 octets>"
        );
    }

    #[test]
    fn replies_show_on_one_line() {
        let reply = Reply::new(250, "2.0.0", "first").line("second");
        assert_eq!(
            TranscriptEntry::Reply(&reply).to_string(),
            "S: 250 2.0.0 first second"
        );
    }

    #[test]
    fn a_closure_is_a_hook() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let hook: TranscriptHook = Arc::new(move |entry: TranscriptEntry<'_>| {
            sink.lock().unwrap().push(entry.to_string());
        });
        hook.record(TranscriptEntry::Command(CommandLine::text("NOOP")));
        assert_eq!(*seen.lock().unwrap(), vec!["C: NOOP".to_string()]);
    }
}
