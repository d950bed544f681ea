//! How a store wraps each event's envelope JSON for delivery: the [`Framing`]
//! a store is given when it is opened. Core knows no wire format: whoever
//! delivers events brings its own (herald-server's lives there), and
//! [`JsonLines`] serves tests and tools that deliver nothing.
//!
//! A store encodes every event once, when it is committed or read, into one
//! buffer per batch; every reader shares those bytes (see
//! [`RecordedEvent`](crate::envelope::RecordedEvent)).

use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// How a store encodes each event's envelope JSON for delivery, once per event, into a batch buffer.
pub trait Framing: Send + Sync + 'static {
    /// An upper bound of the bytes `encode` appends (to allocate a batch once).
    fn max_len(&self, event_type: &str, json: &str) -> usize;
    /// Appends the frame of one event to `buf`; returns the range of the envelope JSON within `buf`.
    ///
    /// The frame is everything appended; the returned range lies within it and
    /// holds `json` byte for byte. `json` is one line of canonical JSON and
    /// `event_type` has no line break (the store refuses such types).
    fn encode(&self, buf: &mut BytesMut, position: u64, event_type: &str, json: &str) -> Range<usize>;
}

/// The neutral framing: the envelope JSON, then `\n` (JSON Lines).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl Framing for JsonLines {
    fn max_len(&self, _event_type: &str, json: &str) -> usize {
        json.len() + 1
    }

    fn encode(&self, buf: &mut BytesMut, _position: u64, _event_type: &str, json: &str) -> Range<usize> {
        debug_assert!(!json.contains('\n'));
        let start = buf.len();
        buf.put_slice(json.as_bytes());
        let end = buf.len();
        buf.put_u8(b'\n');
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_is_the_json_and_a_line_break() {
        let mut buf = BytesMut::from(&b"before"[..]);
        let json = r#"{"a":1}"#;
        let range = JsonLines.encode(&mut buf, 7, "T", json);
        assert_eq!(&buf[..], b"before{\"a\":1}\n");
        assert_eq!(&buf[range], json.as_bytes());
        assert_eq!(buf.len() - 6, JsonLines.max_len("T", json));
    }
}
