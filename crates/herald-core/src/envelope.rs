//! The event envelope (API.md §3), its canonical form and the hash chain, and
//! [`RecordedEvent`]: a stored event carrying its JSON inside its pre-encoded
//! frame (the store's [`Framing`]).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::framing::Framing;
use crate::jcs;

/// The `prev` of the first event in the chain: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who caused an event. Always derived from the credential, never from a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    User,
    Token,
    System,
}

impl ActorKind {
    /// The name it is serialized as.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::System => "system",
        }
    }
}

impl Actor {
    /// The actor for work herald does on its own (and for the command line).
    pub fn system(name: &str) -> Self {
        Actor {
            kind: ActorKind::System,
            id: "system".to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The public envelope of one event, as stored, served and hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub position: u64,
    pub id: Uuid,
    pub stream: String,
    pub version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema: u32,
    pub data: Value,
    pub actor: Actor,
    pub command_id: String,
    pub correlation_id: String,
    pub recorded_at: String,
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope is not a JSON object")]
    NotAnObject,
    #[error("envelope has no string field `hash`")]
    NoHash,
}

impl Envelope {
    /// RFC 8785 canonical JSON of the envelope without its `hash`.
    pub fn canonical_without_hash(&self) -> String {
        let mut value = serde_json::to_value(self).expect("an envelope always serializes");
        if let Some(map) = value.as_object_mut() {
            map.remove("hash");
        }
        canonical(&value)
    }

    /// The canonical JSON of the whole envelope (hash included): what is stored and served.
    pub fn to_canonical_json(&self) -> String {
        canonical(&serde_json::to_value(self).expect("an envelope always serializes"))
    }

    /// Computes `hash` from the previous event's hash, fills it in and returns
    /// the envelope's canonical JSON — the same text as
    /// [`canonical_without_hash`](Self::canonical_without_hash) hashed, then
    /// [`to_canonical_json`](Self::to_canonical_json), with each field
    /// canonicalized once instead of the whole envelope twice (the store's one
    /// writer thread runs this for every event).
    ///
    /// RFC 8785 writes an object as its members' canonical forms, sorted by key,
    /// joined by commas; the envelope's keys are fixed ASCII, so their order is
    /// known, and `hash` sorts between `data` and `id`.
    pub fn seal(&mut self, prev_hash: &str) -> String {
        let mut json = String::with_capacity(512);
        json.push_str("{\"actor\":{\"id\":");
        // The actor's members in order (a test holds this to its Serialize).
        jcs::write_str(&mut json, &self.actor.id);
        json.push_str(",\"kind\":");
        jcs::write_str(&mut json, self.actor.kind.as_str());
        json.push_str(",\"name\":");
        jcs::write_str(&mut json, &self.actor.name);
        json.push_str("},\"command_id\":");
        jcs::write_str(&mut json, &self.command_id);
        json.push_str(",\"correlation_id\":");
        jcs::write_str(&mut json, &self.correlation_id);
        json.push_str(",\"data\":");
        jcs::write_value(&mut json, &self.data);
        let hash_at = json.len();
        json.push_str(",\"id\":");
        jcs::write_str(&mut json, self.id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        json.push_str(",\"position\":");
        jcs::write_u64(&mut json, self.position);
        json.push_str(",\"recorded_at\":");
        jcs::write_str(&mut json, &self.recorded_at);
        json.push_str(",\"schema\":");
        jcs::write_u64(&mut json, u64::from(self.schema));
        json.push_str(",\"stream\":");
        jcs::write_str(&mut json, &self.stream);
        json.push_str(",\"type\":");
        jcs::write_str(&mut json, &self.event_type);
        json.push_str(",\"version\":");
        jcs::write_u64(&mut json, self.version);
        json.push('}');
        self.hash = chain_hash(prev_hash, &json);
        json.insert_str(hash_at, &[",\"hash\":\"", &self.hash, "\""].concat());
        json
    }
}

/// RFC 8785 (JCS) canonical JSON: keys sorted at every level, no whitespace.
pub fn canonical(value: &Value) -> String {
    jcs::to_string(value)
}

/// `hex(SHA-256(prev + "\n" + canonical))`.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// Recomputes the hash of a stored envelope from its JSON text. Returns the
/// recomputed hash and the hash the envelope claims.
pub fn recompute_hash(prev_hash: &str, stored_json: &[u8]) -> Result<(String, String), EnvelopeError> {
    let mut value: Value = serde_json::from_slice(stored_json)?;
    let map = value.as_object_mut().ok_or(EnvelopeError::NotAnObject)?;
    let claimed = match map.remove("hash") {
        Some(Value::String(s)) => s,
        _ => return Err(EnvelopeError::NoHash),
    };
    Ok((chain_hash(prev_hash, &canonical(&value)), claimed))
}

/// An event as it comes out of the store: the few fields routing needs, plus the
/// envelope's JSON inside its pre-encoded frame, as the store's [`Framing`]
/// wrote it.
///
/// The frame is built once, when the event is committed or read, and shared by
/// every subscriber and response that sends it ([`Bytes`] clones are reference
/// counts, not copies).
#[derive(Clone)]
pub struct RecordedEvent {
    position: u64,
    version: u64,
    stream: Box<str>,
    event_type: Box<str>,
    frame: Bytes,
    json: Range<usize>,
}

impl std::fmt::Debug for RecordedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedEvent")
            .field("position", &self.position)
            .field("stream", &self.stream)
            .field("version", &self.version)
            .field("type", &self.event_type)
            .finish()
    }
}

impl RecordedEvent {
    /// Builds an event (and its frame, in `framing`) from stored parts.
    pub fn from_parts(
        framing: &dyn Framing,
        position: u64,
        stream: &str,
        version: u64,
        event_type: &str,
        json: &str,
    ) -> Self {
        let mut buf = BytesMut::with_capacity(framing.max_len(event_type, json));
        Self::encode_into(framing, &mut buf, position, stream, version, event_type, json).finish(buf.freeze())
    }

    /// Appends this event's frame (in `framing`) to `buf`; `finish` it with the
    /// frozen buffer. Used to encode a whole batch into one allocation (sized
    /// by the sum of [`Framing::max_len`]).
    pub fn encode_into(
        framing: &dyn Framing,
        buf: &mut BytesMut,
        position: u64,
        stream: &str,
        version: u64,
        event_type: &str,
        json: &str,
    ) -> PendingEvent {
        let start = buf.len();
        let json_range = framing.encode(buf, position, event_type, json);
        debug_assert!(
            start <= json_range.start
                && json_range.end <= buf.len()
                && buf[json_range.clone()] == *json.as_bytes()
                && buf.len() - start <= framing.max_len(event_type, json),
            "the framing's frame holds the JSON within its bound"
        );
        PendingEvent {
            position,
            version,
            stream: stream.into(),
            event_type: event_type.into(),
            frame: start..buf.len(),
            json: json_range,
        }
    }

    pub fn position(&self) -> u64 {
        self.position
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn stream(&self) -> &str {
        &self.stream
    }
    pub fn category(&self) -> &str {
        category_of(&self.stream)
    }
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// This event's complete frame, as the store's [`Framing`] encoded it:
    /// what a transport sends for it as is.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
    /// The envelope as one line of canonical JSON.
    pub fn json(&self) -> &[u8] {
        &self.frame[self.json.clone()]
    }
    /// [`Self::json`] as shared bytes of the frame (no copy), for a transport
    /// that sends the envelope alone.
    pub fn json_bytes(&self) -> Bytes {
        self.frame.slice(self.json.clone())
    }
    /// Parses the envelope (for aggregates, projections and audits; live delivery never does).
    pub fn envelope(&self) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(self.json())
    }
}

/// An event whose frame is written into a batch buffer that is not frozen yet.
pub struct PendingEvent {
    position: u64,
    version: u64,
    stream: Box<str>,
    event_type: Box<str>,
    frame: Range<usize>,
    json: Range<usize>,
}

impl PendingEvent {
    /// Completes the event once the batch buffer is frozen.
    pub fn finish(self, batch: Bytes) -> RecordedEvent {
        let offset = self.frame.start;
        RecordedEvent {
            position: self.position,
            version: self.version,
            stream: self.stream,
            event_type: self.event_type,
            frame: batch.slice(self.frame),
            json: (self.json.start - offset)..(self.json.end - offset),
        }
    }
}

/// The category of a stream: everything before the first `-`.
pub fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

#[cfg(test)]
mod tests {
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
    fn canonical_form_sorts_keys_and_does_not_escape_slashes() {
        let c = sample(1).canonical_without_hash();
        assert!(
            c.starts_with(r#"{"actor":{"id":"system","kind":"system","name":"test"},"command_id":"c""#),
            "{c}"
        );
        assert!(c.contains(r#""data":{"alpha":{"a":[3,1],"b":"x/y"},"zeta":1}"#), "{c}");
        assert!(!c.contains("hash"));
        assert!(!c.contains(' '));
    }

    #[test]
    fn hash_is_sha256_of_prev_newline_canonical() {
        let mut e = sample(1);
        e.seal(GENESIS_HASH);
        let expected = hex::encode(Sha256::digest(format!(
            "{GENESIS_HASH}\n{}",
            e.canonical_without_hash()
        )));
        assert_eq!(e.hash, expected);
        let stored = e.to_canonical_json();
        let (recomputed, claimed) = recompute_hash(GENESIS_HASH, stored.as_bytes()).unwrap();
        assert_eq!(recomputed, claimed);
        // Any change to the data breaks the hash.
        let tampered = stored.replace("x/y", "x/z");
        let (recomputed, claimed) = recompute_hash(GENESIS_HASH, tampered.as_bytes()).unwrap();
        assert_ne!(recomputed, claimed);
        // So does a different predecessor.
        let (recomputed, claimed) = recompute_hash(&"1".repeat(64), stored.as_bytes()).unwrap();
        assert_ne!(recomputed, claimed);
    }

    #[test]
    fn seal_hashes_the_canonical_form_and_returns_the_stored_json() {
        // Values canonical JSON treats with care: escapes, non-ASCII (and keys
        // sorted by UTF-16 units), numbers past 2^53, floats, empty containers.
        let odd = [
            "",
            "x/y",
            "quote \" backslash \\",
            "\u{0}\u{1f}\u{7f}\n\t\r\u{8}\u{c}",
            "é ü 日本 😀",
            "\u{2028}\u{2029}",
            "<script>",
            "a\"b\"c",
        ];
        let numbers = [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(9_007_199_254_740_993u64),
            serde_json::json!(u64::MAX),
            serde_json::json!(1.5),
            serde_json::json!(1e21),
            serde_json::json!(-0.0),
        ];
        let mut n = 0u64;
        for (i, text) in odd.iter().enumerate() {
            for (j, number) in numbers.iter().enumerate() {
                n += 1;
                let mut e = sample(n * 1_000_000_007);
                e.id = Uuid::from_u128(u128::from(n) * 0x0123_4567_89ab_cdef_0123_4567);
                e.stream = format!("deployment-{text}");
                e.event_type = text.to_string();
                e.command_id = text.to_string();
                e.correlation_id = format!("{text}{i}");
                e.recorded_at = text.to_string();
                e.schema = u32::MAX - j as u32;
                e.version = u64::MAX - n;
                e.actor = Actor {
                    kind: [ActorKind::User, ActorKind::Token, ActorKind::System][n as usize % 3],
                    id: text.to_string(),
                    name: format!("{text}!"),
                };
                e.data = serde_json::json!({
                    text.to_string(): number,
                    "é": [text, number, {}, [], null, true],
                    "\u{10000}": {"b": 1, "a": {"z": text, "": number}},
                    "a": number,
                });
                let without_hash = e.canonical_without_hash();
                let json = e.seal(GENESIS_HASH);
                assert_eq!(e.hash, chain_hash(GENESIS_HASH, &without_hash), "{text:?} {number}");
                assert_eq!(json, e.to_canonical_json(), "{text:?} {number}");
                // The text logs already hold: what serde_jcs makes of the
                // envelope's Serialize.
                assert_eq!(json, serde_jcs::to_string(&e).unwrap(), "{text:?} {number}");
                let mut unsealed = serde_json::to_value(&e).unwrap();
                unsealed.as_object_mut().unwrap().remove("hash");
                assert_eq!(
                    without_hash,
                    serde_jcs::to_string(&unsealed).unwrap(),
                    "{text:?} {number}"
                );
            }
        }
        // And with data of another shape than an object.
        for data in [
            serde_json::json!(null),
            serde_json::json!([1, "x"]),
            serde_json::json!("s"),
        ] {
            let mut e = sample(7);
            e.data = data;
            let without_hash = e.canonical_without_hash();
            let json = e.seal(&"f".repeat(64));
            assert_eq!(json, e.to_canonical_json());
            assert_eq!(e.hash, chain_hash(&"f".repeat(64), &without_hash));
        }
    }

    /// A framing with text on both sides of the JSON, so that a range taken
    /// from the wrong origin shows.
    struct Bracketed;

    impl Framing for Bracketed {
        fn max_len(&self, event_type: &str, json: &str) -> usize {
            20 + 1 + event_type.len() + 1 + json.len() + 1
        }

        fn encode(&self, buf: &mut BytesMut, position: u64, event_type: &str, json: &str) -> Range<usize> {
            buf.extend_from_slice(format!("{position}<{event_type}|").as_bytes());
            let start = buf.len();
            buf.extend_from_slice(json.as_bytes());
            let end = buf.len();
            buf.extend_from_slice(b">");
            start..end
        }
    }

    #[test]
    fn an_event_is_its_framing_s_frame_and_the_json_inside_it() {
        let mut e = sample(42);
        e.seal(GENESIS_HASH);
        let json = e.to_canonical_json();
        let ev = RecordedEvent::from_parts(&Bracketed, 42, &e.stream, 1, &e.event_type, &json);
        let frame = std::str::from_utf8(ev.frame()).unwrap();
        assert_eq!(frame, format!("42<DeploymentStarted|{json}>"));
        assert_eq!(ev.json(), json.as_bytes());
        assert_eq!(ev.envelope().unwrap(), e);
        assert_eq!(ev.category(), "deployment");

        let lines = RecordedEvent::from_parts(&crate::framing::JsonLines, 42, &e.stream, 1, &e.event_type, &json);
        assert_eq!(lines.frame(), format!("{json}\n").as_bytes());
        assert_eq!(lines.json(), json.as_bytes());
    }

    #[test]
    fn a_batch_is_one_buffer_and_each_event_a_slice_of_it() {
        let parts = [(1, "a", "{}"), (20, "Bb", r#"{"x":1}"#), (300, "C", "[]")];
        let size = parts.iter().map(|(_, t, j)| Bracketed.max_len(t, j)).sum();
        let mut buf = BytesMut::with_capacity(size);
        let pending: Vec<PendingEvent> = parts
            .iter()
            .map(|&(p, t, j)| RecordedEvent::encode_into(&Bracketed, &mut buf, p, "s-1", p, t, j))
            .collect();
        assert!(buf.len() <= size);
        let batch = buf.freeze();
        let events: Vec<RecordedEvent> = pending.into_iter().map(|p| p.finish(batch.clone())).collect();
        assert_eq!(&batch[..], br#"1<a|{}>20<Bb|{"x":1}>300<C|[]>"#);
        let mut at = 0;
        for (e, (p, t, j)) in events.iter().zip(parts) {
            assert_eq!(
                (e.position(), e.version(), e.event_type(), e.stream()),
                (p, p, t, "s-1")
            );
            assert_eq!(e.json(), j.as_bytes());
            // A slice of the batch, not a copy.
            assert_eq!(e.frame().as_ptr(), batch[at..].as_ptr());
            at += e.frame().len();
        }
        assert_eq!(at, batch.len());
    }
}
