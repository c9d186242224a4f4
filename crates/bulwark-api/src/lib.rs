//! OpenAI-compatible wire types and the gateway's one error type.
//!
//! This crate does no IO. It defines what a request looks like after parsing and
//! validation ([`chat`], [`completions`]), what a response looks like ([`response`]),
//! and [`ApiError`], the only error that reaches a client. The server maps an
//! `ApiError` to an HTTP response in exactly one place.

pub mod anthropic;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod response;
pub mod responses;
pub mod sampling;
pub mod sse;
pub mod to_anthropic;
pub mod tool_calls;

pub use error::{ApiError, ErrorCode, ErrorKind};

/// Chat completion chunks in, another protocol's stream events out (Anthropic
/// Messages, OpenAI Responses): what the server drives a streamed answer through to
/// render it in the client's protocol.
pub trait StreamTranslate: Send + 'static {
    /// The events for one chat chunk (its parsed JSON).
    fn push(&mut self, chunk: &serde_json::Value) -> String;
    /// The closing events, at `[DONE]` or the end of the chat stream. Once.
    fn finish(&mut self) -> String;
    /// An error event in place of the rest of the stream.
    fn error(&mut self, kind: ErrorKind, message: &str) -> String;
}
