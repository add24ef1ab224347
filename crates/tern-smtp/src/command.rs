//! Parsing SMTP commands (RFC 5321 section 4.1) and serialising them for
//! the client side.
//!
//! [`parse_command`] takes one command line *without* its CRLF (see
//! [`crate::line::LineFramer`] for framing) and returns a [`Command`] or a
//! [`CommandError`] whose [`CommandError::reply`] is the exact reply to
//! send.
//!
//! Decisions, with the RFCs they follow:
//!
//! * Verbs and parameter keywords are case-insensitive.
//! * CR, LF and NUL are rejected anywhere in the line (`501 5.5.2`), as is
//!   a line that is not UTF-8.
//! * Line limits include the CRLF: 512 octets (RFC 5321 4.5.3.1.4) for every
//!   command except `MAIL` and `RCPT`, which may be up to
//!   [`MAX_MAIL_RCPT_LINE`] = 1012 octets, and `AUTH`, which may carry an
//!   initial response of up to [`MAX_AUTH_LINE`] = 12288 octets (RFC 4954
//!   section 4). Over the limit: `500 5.5.2`. The 500 extra octets of `MAIL`
//!   and `RCPT` are what the extensions tern's server always offers allow:
//!   `NOTIFY` and `ORCPT` on `RCPT` (RFC 3461 section 4; an ORCPT alone may
//!   be 500 characters), and `RET`, `ENVID` (RFC 3461) and `AUTH=` (RFC 4954
//!   section 5) on `MAIL`. A client that fills both a long path and a long
//!   ORCPT is within the RFC, so the strict 512 refused it.
//! * Trailing spaces are ignored. `MAIL FROM:` and `RCPT TO:` tolerate
//!   spaces between the colon and the path (a common client bug).
//! * `MAIL`: the `SMTPUTF8` parameter on the same line allows a UTF-8
//!   reverse path. `RCPT`: whether the transaction is SMTPUTF8 comes from
//!   [`ParseContext::smtputf8`] (use [`parse_command_with`]);
//!   [`parse_command`] assumes it is not. A non-ASCII address otherwise gets
//!   `553 5.6.7` (RFC 6531 section 3.7.4.1 / RFC 6532).
//! * `RCPT TO:<Postmaster>` (no domain, RFC 5321 4.1.1.3) becomes
//!   `postmaster@` [`ParseContext::postmaster_domain`] when that is set, and
//!   is rejected as bad address syntax otherwise.
//! * Enhanced codes (RFC 3463): unrecognised command `5.5.1`; syntax error
//!   in the command line `5.5.2`; bad or missing arguments and parameters
//!   `5.5.4`; bad sender address `5.1.7`; bad recipient address `5.1.3`.

use std::fmt;

use thiserror::Error;

use crate::params::{MailParams, ParamError, RcptParams};
use crate::path::{Domain, Mailbox, PathError, ReversePath, parse_forward_path, parse_reverse_path};
use crate::reply::Reply;

/// Maximum command line length including CRLF (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Maximum `AUTH` line length including CRLF (RFC 4954 section 4), also
/// the limit for SASL continuation lines.
pub const MAX_AUTH_LINE: usize = 12288;
/// Maximum `MAIL` and `RCPT` line length including CRLF: 512 plus the 500
/// octets the DSN parameters (RFC 3461 section 4) and `AUTH=` (RFC 4954
/// section 5) may add.
pub const MAX_MAIL_RCPT_LINE: usize = MAX_COMMAND_LINE + 500;

/// The maximum line length (including CRLF) for a line starting with
/// `prefix` (at least the verb and a space, when the line has them).
pub fn max_line_len(prefix: &[u8]) -> usize {
    match prefix.get(..5) {
        Some(v) if v.eq_ignore_ascii_case(b"AUTH ") => MAX_AUTH_LINE,
        Some(v) if v.eq_ignore_ascii_case(b"MAIL ") || v.eq_ignore_ascii_case(b"RCPT ") => MAX_MAIL_RCPT_LINE,
        _ => MAX_COMMAND_LINE,
    }
}

/// The SASL mechanisms tern implements (RFC 4954, RFC 4616).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AuthMechanism {
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `LOGIN` (draft-murchison-sasl-login).
    Login,
}

impl AuthMechanism {
    /// The mechanism name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
        }
    }
}

impl fmt::Display for AuthMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An SMTP command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Command {
    /// `EHLO domain`; the argument as sent (not validated beyond being
    /// printable ASCII, policy decides).
    Ehlo(String),
    /// `HELO domain`; as for [`Command::Ehlo`].
    Helo(String),
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        /// The reverse path.
        from: ReversePath,
        /// The parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]`.
    Rcpt {
        /// The recipient (source route dropped).
        to: Mailbox,
        /// The parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// `LAST` was given.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]` (the argument is ignored).
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `HELP [string]`.
    Help(Option<String>),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The mechanism.
        mechanism: AuthMechanism,
        /// The base64 initial response as sent; `Some("")` for `=` (an
        /// empty response), `None` when absent.
        initial_response: Option<String>,
    },
}

impl Command {
    /// The verb, upper-case.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }

    /// The wire form with the CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_wire(&mut out);
        out
    }

    /// Appends the wire form with the CRLF to `out`: a pipelined group is written into one buffer, with
    /// no string per command.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{self}\r\n");
    }
}

impl fmt::Display for Command {
    /// The wire form without the CRLF, e.g. `MAIL FROM:<a@b.test> SIZE=10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(d) => write!(f, "EHLO {d}"),
            Command::Helo(d) => write!(f, "HELO {d}"),
            Command::Mail { from, params } => {
                write!(f, "MAIL FROM:{from}")?;
                if !params.is_empty() {
                    write!(f, " {params}")?;
                }
                Ok(())
            }
            Command::Rcpt { to, params } => {
                write!(f, "RCPT TO:<{to}>")?;
                if !params.is_empty() {
                    write!(f, " {params}")?;
                }
                Ok(())
            }
            Command::Bdat { size, last } => {
                write!(f, "BDAT {size}")?;
                if *last {
                    f.write_str(" LAST")?;
                }
                Ok(())
            }
            Command::Vrfy(s) => write!(f, "VRFY {s}"),
            Command::Help(Some(s)) => write!(f, "HELP {s}"),
            Command::Auth {
                mechanism,
                initial_response,
            } => match initial_response.as_deref() {
                None => write!(f, "AUTH {mechanism}"),
                Some("") => write!(f, "AUTH {mechanism} ="),
                Some(r) => write!(f, "AUTH {mechanism} {r}"),
            },
            other => f.write_str(other.verb()),
        }
    }
}

/// Why a command line was rejected. [`CommandError::reply`] gives the reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// Over the line limit: `500 5.5.2`.
    #[error("line too long")]
    LineTooLong,
    /// An empty line: `500 5.5.2`.
    #[error("empty command")]
    Empty,
    /// An unrecognised verb: `500 5.5.1`.
    #[error("command unrecognized")]
    UnknownCommand,
    /// CR, LF or NUL in the line: `501 5.5.2`.
    #[error("control character in command")]
    ControlChar,
    /// The line is not UTF-8: `501 5.5.2`.
    #[error("command is not valid UTF-8")]
    InvalidUtf8,
    /// The command line does not have the command's shape: `501 5.5.2`.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// Missing, extra or bad arguments: `501 5.5.4`.
    #[error("invalid arguments: {0}")]
    InvalidArguments(&'static str),
    /// A bad `MAIL FROM` path: `501 5.1.7`.
    #[error("bad sender address syntax: {0}")]
    BadSender(PathError),
    /// A bad `RCPT TO` path: `501 5.1.3`.
    #[error("bad recipient address syntax: {0}")]
    BadRecipient(PathError),
    /// A non-ASCII address without SMTPUTF8: `553 5.6.7`.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAsciiAddress,
    /// A bad `MAIL`/`RCPT` parameter: unknown ones `555 5.5.4`, others
    /// (duplicates, bad values) `501 5.5.4`.
    #[error("{0}")]
    Param(ParamError),
    /// An `AUTH` mechanism we do not offer: `504 5.5.4`.
    #[error("unrecognized authentication mechanism {0}")]
    UnknownAuthMechanism(String),
}

impl CommandError {
    /// The exact reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::LineTooLong => Reply::new(500, "5.5.2", "Line too long"),
            CommandError::Empty => Reply::new(500, "5.5.2", "Syntax error: empty command"),
            CommandError::UnknownCommand => Reply::new(500, "5.5.1", "Command unrecognized"),
            CommandError::ControlChar => Reply::new(501, "5.5.2", "Syntax error: CR, LF or NUL in command"),
            CommandError::InvalidUtf8 => Reply::new(501, "5.5.2", "Syntax error: command is not valid UTF-8"),
            CommandError::Syntax(s) => Reply::new(501, "5.5.2", format!("Syntax error: {s}")),
            CommandError::InvalidArguments(s) => Reply::new(501, "5.5.4", format!("Invalid arguments: {s}")),
            CommandError::BadSender(e) => Reply::new(501, "5.1.7", format!("Bad sender address syntax: {e}")),
            CommandError::BadRecipient(e) => {
                Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {e}"))
            }
            CommandError::NonAsciiAddress => {
                Reply::new(553, "5.6.7", "Non-ASCII addresses require the SMTPUTF8 extension")
            }
            CommandError::Param(e @ ParamError::Unknown(_)) => {
                Reply::new(555, "5.5.4", format!("Unsupported parameter: {e}"))
            }
            CommandError::Param(e) => Reply::new(501, "5.5.4", format!("Invalid parameter: {e}")),
            CommandError::UnknownAuthMechanism(_) => {
                Reply::new(504, "5.5.4", "Unrecognized authentication type")
            }
        }
    }
}

impl From<ParamError> for CommandError {
    fn from(e: ParamError) -> Self {
        CommandError::Param(e)
    }
}

/// Session state that affects parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseContext {
    /// The current transaction's `MAIL` had `SMTPUTF8`, so `RCPT` may use
    /// UTF-8 addresses.
    pub smtputf8: bool,
    /// The domain to complete `RCPT TO:<Postmaster>` with. `None` rejects
    /// the bare `<Postmaster>` form.
    pub postmaster_domain: Option<String>,
}

impl ParseContext {
    /// A context with only the SMTPUTF8 flag set as given.
    pub fn with_smtputf8(smtputf8: bool) -> Self {
        ParseContext {
            smtputf8,
            postmaster_domain: None,
        }
    }
}

/// Parses one command line (without CRLF) with a default [`ParseContext`]
/// (no SMTPUTF8 transaction, no postmaster domain).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    parse_command_with(line, &ParseContext::default())
}

/// Parses one command line (without CRLF) in the given context.
pub fn parse_command_with(line: &[u8], ctx: &ParseContext) -> Result<Command, CommandError> {
    if line.len() + 2 > max_line_len(line) {
        return Err(CommandError::LineTooLong);
    }
    if memchr::memchr3(b'\r', b'\n', 0, line).is_some() {
        return Err(CommandError::ControlChar);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::InvalidUtf8)?;
    let line = line.trim_end_matches(' ');
    if line.is_empty() {
        return Err(CommandError::Empty);
    }
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, Some(r)),
        None => (line, None),
    };
    let is = |v: &str| verb.eq_ignore_ascii_case(v);
    if is("MAIL") {
        parse_mail(rest.unwrap_or(""))
    } else if is("RCPT") {
        parse_rcpt(rest.unwrap_or(""), ctx)
    } else if is("EHLO") || is("HELO") {
        let arg = rest.map(|r| r.trim_start_matches(' ')).unwrap_or("");
        if arg.is_empty() {
            return Err(CommandError::InvalidArguments(
                "domain or address literal required",
            ));
        }
        if !arg.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(CommandError::InvalidArguments(
                "EHLO/HELO argument must be printable ASCII",
            ));
        }
        Ok(if is("EHLO") {
            Command::Ehlo(arg.to_owned())
        } else {
            Command::Helo(arg.to_owned())
        })
    } else if is("DATA") {
        no_args(rest, Command::Data)
    } else if is("RSET") {
        no_args(rest, Command::Rset)
    } else if is("QUIT") {
        no_args(rest, Command::Quit)
    } else if is("STARTTLS") {
        no_args(rest, Command::StartTls)
    } else if is("NOOP") {
        Ok(Command::Noop)
    } else if is("BDAT") {
        parse_bdat(rest.unwrap_or(""))
    } else if is("AUTH") {
        parse_auth(rest.unwrap_or(""))
    } else if is("VRFY") {
        match rest.map(|r| r.trim_start_matches(' ')) {
            Some(r) if !r.is_empty() => Ok(Command::Vrfy(r.to_owned())),
            _ => Err(CommandError::InvalidArguments("VRFY requires an argument")),
        }
    } else if is("HELP") {
        Ok(Command::Help(
            rest.map(|r| r.trim_start_matches(' '))
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
        ))
    } else {
        Err(CommandError::UnknownCommand)
    }
}

fn no_args(rest: Option<&str>, cmd: Command) -> Result<Command, CommandError> {
    match rest {
        Some(r) if !r.trim_start_matches(' ').is_empty() => {
            Err(CommandError::InvalidArguments("this command takes no arguments"))
        }
        _ => Ok(cmd),
    }
}

/// Strips a case-insensitive `prefix` (like `FROM:`) and any spaces after it.
fn strip_keyword<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s[prefix.len()..].trim_start_matches(' '))
}

/// Splits `<path>[ params]` into the path (with brackets) and the parameter
/// text. The path ends at the first `>` outside a quoted string.
fn split_path(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with('<') {
        return None;
    }
    let mut in_quote = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if in_quote {
            match b {
                b'\\' => escaped = true,
                b'"' => in_quote = false,
                _ => {}
            }
        } else if b == b'"' {
            in_quote = true;
        } else if b == b'>' {
            return Some(s.split_at(i + 1));
        }
    }
    None
}

/// Splits the argument of `MAIL`/`RCPT` after the `FROM:`/`TO:` keyword.
/// `bad_path` wraps the error for a missing `<...>`.
fn path_and_params(s: &str, bad_path: fn(PathError) -> CommandError) -> Result<(&str, &str), CommandError> {
    let (path, params) = split_path(s).ok_or(bad_path(PathError::MissingBrackets))?;
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(CommandError::Syntax(
            "expected a space between the address and parameters",
        ));
    }
    Ok((path, params))
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let arg = strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax("MAIL FROM:<address>"))?;
    let (path, params) = path_and_params(arg, CommandError::BadSender)?;
    let params = MailParams::parse(params)?;
    let from = parse_reverse_path(path, params.smtputf8).map_err(|e| match e {
        PathError::NonAscii => CommandError::NonAsciiAddress,
        e => CommandError::BadSender(e),
    })?;
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(rest: &str, ctx: &ParseContext) -> Result<Command, CommandError> {
    let arg = strip_keyword(rest, "TO:").ok_or(CommandError::Syntax("RCPT TO:<address>"))?;
    let (path, params) = path_and_params(arg, CommandError::BadRecipient)?;
    let params = RcptParams::parse(params)?;
    if path.eq_ignore_ascii_case("<postmaster>") {
        let domain = ctx
            .postmaster_domain
            .as_deref()
            .ok_or(CommandError::BadRecipient(PathError::MissingDomain))?;
        return Ok(Command::Rcpt {
            to: Mailbox {
                local_part: "postmaster".to_owned(),
                domain: Domain::Name(domain.to_owned()),
            },
            params,
        });
    }
    let to = parse_forward_path(path, ctx.smtputf8).map_err(|e| match e {
        PathError::NonAscii => CommandError::NonAsciiAddress,
        e => CommandError::BadRecipient(e),
    })?;
    Ok(Command::Rcpt { to, params })
}

fn parse_bdat(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(CommandError::InvalidArguments("BDAT requires a chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::InvalidArguments("expected BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::InvalidArguments("expected BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let mech = words
        .next()
        .ok_or(CommandError::InvalidArguments("AUTH requires a mechanism"))?;
    let mechanism = if mech.eq_ignore_ascii_case("PLAIN") {
        AuthMechanism::Plain
    } else if mech.eq_ignore_ascii_case("LOGIN") {
        AuthMechanism::Login
    } else {
        return Err(CommandError::UnknownAuthMechanism(mech.to_ascii_uppercase()));
    };
    let initial_response = match words.next() {
        None => None,
        Some("=") => Some(String::new()),
        Some(r) => {
            if !r
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            {
                return Err(CommandError::Syntax("initial response is not base64"));
            }
            Some(r.to_owned())
        }
    };
    if words.next().is_some() {
        return Err(CommandError::InvalidArguments(
            "expected AUTH mechanism [initial-response]",
        ));
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}
