//! The SMTP client: [`SmtpClient`], usable on its own, split by phase.
//!
//! ```text
//! SmtpClient::connect / connect_tls   connect.rs      TCP (TLS from the first byte), greeting
//!   .ehlo(name)                       connect.rs      EHLO, HELO when EHLO is not understood
//!   .starttls(&tls, verify)           tls.rs          STARTTLS, handshake, EHLO again
//!   .auth_plain / auth_login / auth_xoauth2   auth.rs  AUTH PLAIN, LOGIN or XOAUTH2, over TLS only
//!   .send_message(env, rcpts, body)   transaction.rs  content checks, MAIL..DATA, RSET, 452 continuation
//!   .send_message_after(held, ..)     transaction.rs  the same, the previous message's end of data first
//!                                     pipeline.rs     the MAIL/RCPT/DATA group, pipelined when offered
//!                                     chunking.rs     BDAT instead of DATA when CHUNKING is offered
//!   .quit()                           client.rs       QUIT and close
//! ```
//!
//! Its deadlines are one [`Timeouts`]; a [`Transcript`] hook in its [`ClientOptions`] sees every command
//! and reply ([`transcript`]: AUTH payloads masked, message data as its size). Everything goes through
//! one [`wire`], which also notices a broken connection ([`SmtpClient::is_usable`]). What to do with a
//! session (connection limits, reuse, holds, MX failover) is the worker's business, not the client's.

mod auth;
pub mod chunking;
pub mod client;
pub mod connect;
pub mod content;
pub mod pipeline;
pub mod tls;
pub mod transaction;
pub mod transcript;
pub mod wire;

pub use client::{ClientOptions, SmtpClient, Timeouts};
pub use connect::ConnectError;
pub use tls::{CertificateProblem, StartTls, TlsClients, TlsSession};
pub use transaction::{HeldMessage, MessageReplies, NotStarted, RecipientReply, Sent};
pub use transcript::{CommandLine, Transcript, TranscriptEntry, TranscriptHook, tracing_transcript};
pub use wire::{WireError, reply_line};
