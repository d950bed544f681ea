//! What every live and resource stream is, once opened: pre-encoded SSE
//! frames, and where it starts. A leaf (`live.rs` and `resources.rs` open
//! them; `serve.rs` and the router write them).

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::Stream;

/// A live stream's body: pre-encoded SSE frames.
pub type LiveStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

/// An opened live stream.
pub struct Opened {
    /// Where the stream starts when the client gave no position it could use
    /// (none, or one beyond the log): the log's head (also the stream's first
    /// `id:`), or the position of a resource stream's first state. Sent as the
    /// `Last-Event-ID` response header.
    pub head: Option<u64>,
    pub body: LiveStream,
}
