//! The event store conformance suite on SQLite, one temporary directory per
//! test: once with the neutral framing, once with a framing that puts bytes
//! before and after the JSON (so that a frame or JSON range taken from the
//! wrong offset of a batch shows).

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use herald_conformance::TempDirHarness;
use herald_core::{EventStore, Framing, JsonLines};
use herald_store::sqlite::SqliteStore;

mod json_lines {
    use super::*;

    herald_conformance::conformance_tests!(TempDirHarness::new(Arc::new(JsonLines), |dir, framing| {
        SqliteStore::open(dir, framing).map(|store| store as Arc<dyn EventStore>)
    }));
}

/// `<position type>json;` — position and type first, a byte after.
struct Bracketed;

impl Framing for Bracketed {
    fn max_len(&self, event_type: &str, json: &str) -> usize {
        1 + 20 + 1 + event_type.len() + 1 + json.len() + 1
    }

    fn encode(&self, buf: &mut BytesMut, position: u64, event_type: &str, json: &str) -> Range<usize> {
        buf.put_u8(b'<');
        buf.put_slice(position.to_string().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(event_type.as_bytes());
        buf.put_u8(b'>');
        let start = buf.len();
        buf.put_slice(json.as_bytes());
        let end = buf.len();
        buf.put_u8(b';');
        start..end
    }
}

mod bracketed {
    use super::*;

    herald_conformance::conformance_tests!(TempDirHarness::new(Arc::new(Bracketed), |dir, framing| {
        SqliteStore::open(dir, framing).map(|store| store as Arc<dyn EventStore>)
    }));
}
