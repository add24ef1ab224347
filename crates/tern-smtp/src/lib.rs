//! SMTP wire protocol for tern: command parsing, paths, ESMTP parameters,
//! replies, EHLO capabilities, the DATA codec and xtext.
//!
//! Pure code: no sockets, no async, no I/O. Parsers that consume a stream
//! are incremental, give the same result however the input is split, and
//! hold a bounded amount of memory.
//!
//! | module | what |
//! |---|---|
//! | [`path`] | [`Mailbox`], [`Domain`], [`ReversePath`], path parsing |
//! | [`params`] | `MAIL`/`RCPT` parameters: [`MailParams`], [`RcptParams`], ... |
//! | [`command`] | [`Command`], [`parse_command`], [`CommandError::reply`] |
//! | [`line`](mod@line) | [`LineFramer`]: CRLF command-line framing with length limits |
//! | [`reply`] | [`Reply`], [`EnhancedCode`], the client-side [`ReplyParser`] |
//! | [`ehlo`] | [`Capabilities`] from / to an EHLO reply |
//! | [`data`] | [`DataDecoder`]: server-side DATA decoding, smuggling detection |
//! | [`data_encode`] | [`DataEncoder`], [`encode_data`]: client-side DATA encoding |
//! | [`xtext`] | RFC 3461 xtext |
//!
//! The optional `serde` feature derives `Serialize`/`Deserialize` on the
//! data types; [`Mailbox`] and [`EnhancedCode`] use their string forms.
#![forbid(unsafe_code)]

pub mod command;
pub mod data;
pub mod data_encode;
pub mod ehlo;
pub mod line;
pub mod params;
pub mod path;
pub mod reply;
pub mod xtext;

pub use command::{AuthMechanism, Command, CommandError, ParseContext, parse_command, parse_command_with};
pub use data::{DataDecoder, DataStatus, Violations};
pub use data_encode::{DataEncoder, encode_data, normalize_line_endings};
pub use ehlo::Capabilities;
pub use line::{LineError, LineFramer};
pub use params::{Body, MailParams, Notify, OriginalRecipient, ParamError, RcptParams, Ret};
pub use path::{
    Domain, Mailbox, PathError, ReversePath, parse_forward_path, parse_mailbox, parse_reverse_path,
};
pub use reply::{
    EnhancedCode, EnhancedCodeError, IntoEnhancedCode, Reply, ReplyClass, ReplyError, ReplyParser,
};
pub use xtext::{XtextError, xtext_decode, xtext_encode};
