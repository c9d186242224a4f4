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
pub mod to_anthropic;

pub use error::{ApiError, ErrorCode, ErrorKind};
