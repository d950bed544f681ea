//! What every live and resource stream is, once opened: pre-encoded SSE
//! frames, and where it starts; and [`Sse`], the framing the server opens its
//! event store with, so that each event is one SSE message encoded once. A
//! leaf (`live.rs` and `resources.rs` open the streams; `serve.rs` and the
//! router write them; the crate root opens the store).

use std::convert::Infallible;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use herald_core::framing::Framing;

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

/// Each event as one Server-Sent Events message: `id: <position>`, `event:
/// <type>`, `data: <envelope JSON>`, then the blank line. The store encodes it
/// once per event, into one buffer per committed batch that every subscriber
/// shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sse;

impl Framing for Sse {
    /// (A position has at most 20 digits.)
    fn max_len(&self, event_type: &str, json: &str) -> usize {
        4 + 20 + 8 + event_type.len() + 7 + json.len() + 2
    }

    fn encode(&self, buf: &mut BytesMut, position: u64, event_type: &str, json: &str) -> Range<usize> {
        // One `data:` line: the stored JSON is canonical (no raw line break),
        // and the store refuses a type with one.
        debug_assert!(!json.contains('\n') && !event_type.contains('\n'));
        buf.put_slice(b"id: ");
        buf.put_slice(position.to_string().as_bytes());
        buf.put_slice(b"\nevent: ");
        buf.put_slice(event_type.as_bytes());
        buf.put_slice(b"\ndata: ");
        let json_start = buf.len();
        buf.put_slice(json.as_bytes());
        let json_end = buf.len();
        buf.put_slice(b"\n\n");
        json_start..json_end
    }
}

#[cfg(test)]
mod tests {
    use herald_core::envelope::{Actor, Envelope, GENESIS_HASH, RecordedEvent};
    use uuid::Uuid;

    use super::*;

    fn sample(position: u64) -> Envelope {
        Envelope {
            position,
            id: Uuid::nil(),
            stream: "deployment-a/b".into(),
            version: 1,
            event_type: "DeploymentStarted".into(),
            schema: 1,
            data: serde_json::json!({"zeta": 1, "alpha": {"b": "x/y", "a": [3, 1]}}),
            actor: Actor::system("test"),
            command_id: "c".into(),
            correlation_id: "c".into(),
            recorded_at: "2026-11-22T03:32:54.527Z".into(),
            hash: String::new(),
        }
    }

    #[test]
    fn frame_wraps_the_json_in_one_sse_message() {
        let mut e = sample(42);
        e.seal(GENESIS_HASH);
        let json = e.to_canonical_json();
        let ev = RecordedEvent::from_parts(&Sse, 42, &e.stream, 1, &e.event_type, &json);
        let frame = std::str::from_utf8(ev.frame()).unwrap();
        assert_eq!(frame, format!("id: 42\nevent: DeploymentStarted\ndata: {json}\n\n"));
        assert_eq!(ev.json(), json.as_bytes());
        assert_eq!(ev.envelope().unwrap(), e);
        assert_eq!(ev.category(), "deployment");
    }

    #[test]
    fn max_len_is_an_upper_bound() {
        for p in [1, 9, 10, 99, 100, 123_456_789, u64::MAX] {
            let ev = RecordedEvent::from_parts(&Sse, p, "s-1", 1, "T", "{}");
            assert!(ev.frame().len() <= Sse.max_len("T", "{}"));
        }
    }
}
