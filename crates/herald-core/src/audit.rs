//! Verifies the stored log (API.md §3, `herald verify`, `GET /api/audit/verify`).
//!
//! For every stored row, in position order from 1 to the head:
//! - the position is the next one (no hole);
//! - the stored text is exactly the canonical JSON (RFC 8785) of the envelope
//!   it holds: a duplicate key, a blank line or any whitespace makes it differ;
//! - it has the envelope's fields and no other, of the right types;
//! - `hash` is `SHA-256(prev + "\n" + canonical without hash)` (the chain);
//! - every column the backend stores beside the envelope (position, stream,
//!   version, type, category, hash) says what the envelope says.
//!
//! A removed tail cannot be seen from the rows left: an anchor recorded
//! earlier ([`Expect`], `GET /api/audit/head`) must still be there.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::envelope::{Actor, GENESIS_HASH, category_of, chain_hash};
use crate::store::{EventStore, Filter, Head, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events checked.
    pub checked: u64,
    pub head_position: u64,
    pub head_hash: String,
    /// The first position that is bad (missing, edited, or — for a missing
    /// anchor — the first position past the end of the log).
    pub first_bad_position: Option<u64>,
    /// What is wrong (absent when `ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// An anchor recorded earlier (`POSITION:HASH`, as `GET /api/audit/head` gives
/// it): the event at `position` must still exist with this hash. Events after
/// it are fine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub position: u64,
    pub hash: String,
}

impl std::str::FromStr for Expect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (position, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not POSITION:HASH (e.g. 42:{GENESIS_HASH})"))?;
        let position = position
            .parse::<u64>()
            .map_err(|_| format!("{position:?} is not a position (a whole number ≥ 0)"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("{hash:?} is not a hash (64 lowercase hex digits)"));
        }
        Ok(Expect {
            position,
            hash: hash.to_owned(),
        })
    }
}

/// One stored row: the envelope's text and the columns the backend keeps
/// beside it (`None`: this backend has no such column, or did not read it).
#[derive(Debug, Clone, Copy)]
pub struct StoredRow<'a> {
    pub position: u64,
    pub envelope: &'a str,
    pub stream: Option<&'a str>,
    pub version: Option<u64>,
    pub event_type: Option<&'a str>,
    pub category: Option<&'a str>,
    pub hash: Option<&'a str>,
}

/// What a checked envelope says about its row: the columns a backend keeps
/// beside it, and its `recorded_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEnvelope {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_type: String,
    pub command_id: String,
    pub recorded_at: String,
    pub hash: String,
}

/// The envelope's fields, borrowed from the parsed JSON (`data` is skipped:
/// the canonical comparison covers it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by `Deserialize`: their presence and types are the check
struct Fields<'a> {
    position: u64,
    id: uuid::Uuid,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    version: u64,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    schema: u32,
    data: serde::de::IgnoredAny,
    actor: Actor,
    #[serde(borrow)]
    command_id: Cow<'a, str>,
    #[serde(borrow)]
    correlation_id: Cow<'a, str>,
    #[serde(borrow)]
    recorded_at: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
}

/// The canonical (RFC 8785) text of `map`, and of `map` without its `hash`
/// member, each member canonicalized once.
fn canonical_with_and_without_hash(map: &Map<String, Value>) -> (String, String) {
    let mut keys: Vec<(&String, &Value)> = map.iter().collect();
    // RFC 8785 §3.2.3: members sorted by their names' UTF-16 code units.
    keys.sort_by(|a, b| crate::jcs::utf16_cmp(a.0, b.0));
    let mut without = String::with_capacity(256);
    without.push('{');
    let mut hash_member: Option<(usize, String)> = None;
    for (key, value) in keys {
        let mut member = String::with_capacity(64);
        crate::jcs::write_str(&mut member, key);
        member.push(':');
        crate::jcs::write_value(&mut member, value);
        if key == "hash" {
            hash_member = Some((without.len(), member));
            continue;
        }
        if without.len() > 1 {
            without.push(',');
        }
        without.push_str(&member);
    }
    without.push('}');
    let full = match hash_member {
        None => without.clone(),
        Some((at, member)) => {
            let mut full = String::with_capacity(without.len() + member.len() + 1);
            if at > 1 {
                full.push_str(&without[..at]);
                full.push(',');
                full.push_str(&member);
                full.push_str(&without[at..]);
            } else if without.len() > 2 {
                full.push('{');
                full.push_str(&member);
                full.push(',');
                full.push_str(&without[1..]);
            } else {
                full.push('{');
                full.push_str(&member);
                full.push('}');
            }
            full
        }
    };
    (full, without)
}

/// Why the stored text differs from its canonical form, for the report.
fn describe_difference(stored: &str, canonical: &str) -> String {
    let at = stored
        .bytes()
        .zip(canonical.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(stored.len().min(canonical.len()));
    let what = if stored.contains(['\n', '\r']) {
        "it contains a line break"
    } else if stored.len() > canonical.len() && stored[at..].starts_with([' ', '\t']) {
        "it contains whitespace"
    } else if stored.len() > canonical.len() {
        "it has more text than its canonical form (a duplicate key?)"
    } else {
        "its members, numbers or escapes are not written canonically"
    };
    format!(
        "the stored envelope is not canonical JSON (RFC 8785): {what}; it differs from its canonical form at byte {at}"
    )
}

/// Walks rows in position order and builds the report.
#[derive(Debug)]
pub struct ChainVerifier {
    head: Head,
    expect: Option<Expect>,
    prev: String,
    next_position: u64,
    checked: u64,
    bad: Option<(u64, String)>,
}

impl ChainVerifier {
    /// A walk of the log up to `head`, read before the first row.
    pub fn new(head: Head, expect: Option<Expect>) -> Self {
        ChainVerifier {
            head,
            expect,
            prev: GENESIS_HASH.to_owned(),
            next_position: 1,
            checked: 0,
            bad: None,
        }
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Records a problem found outside [`check`](Self::check) (a row that
    /// could not be read as one), unless one was found before.
    pub fn fail_at(&mut self, position: u64, problem: String) {
        if self.bad.is_none() {
            self.bad = Some((position, problem));
        }
    }

    /// Checks the next row. Returns false once something is bad: stop there.
    pub fn check(&mut self, row: StoredRow<'_>) -> bool {
        if self.bad.is_some() {
            return false;
        }
        match self.check_row(row, false, |fields| fields.hash.into_owned()) {
            Ok(hash) => {
                self.advance(hash);
                true
            }
            Err((position, problem)) => {
                self.bad = Some((position, problem));
                false
            }
        }
    }

    /// Checks the next envelope of a log that is text only (an export, line by
    /// line: no row, so no position but the one expected next) with the same
    /// rules as [`check`](Self::check), and returns what it says. `Err` names
    /// the position expected and the problem; once one was found, every later
    /// call returns it again.
    pub fn check_envelope(&mut self, envelope: &str) -> Result<CheckedEnvelope, (u64, String)> {
        if let Some(bad) = &self.bad {
            return Err(bad.clone());
        }
        let row = StoredRow {
            position: self.next_position,
            envelope,
            stream: None,
            version: None,
            event_type: None,
            category: None,
            hash: None,
        };
        let checked = self.check_row(row, true, |fields| CheckedEnvelope {
            position: fields.position,
            stream: fields.stream.into_owned(),
            version: fields.version,
            event_type: fields.event_type.into_owned(),
            command_id: fields.command_id.into_owned(),
            recorded_at: fields.recorded_at.into_owned(),
            hash: fields.hash.into_owned(),
        });
        match checked {
            Ok(checked) => {
                self.advance(checked.hash.clone());
                Ok(checked)
            }
            Err(bad) => {
                self.bad = Some(bad.clone());
                Err(bad)
            }
        }
    }

    /// The position and hash of the last row checked (position 0 and
    /// [`GENESIS_HASH`] before the first).
    pub fn last(&self) -> Head {
        Head {
            position: self.next_position - 1,
            hash: self.prev.clone(),
        }
    }

    fn advance(&mut self, hash: String) {
        self.prev = hash;
        self.checked += 1;
        self.next_position += 1;
    }

    /// Checks `row`; `Ok` with what `found` takes from its envelope's fields.
    /// `from_text`: the row is an envelope alone, expected at `row.position`
    /// (its own position is checked before its hash, so that a line out of
    /// order is reported as such).
    fn check_row<T>(
        &self,
        row: StoredRow<'_>,
        from_text: bool,
        found: impl FnOnce(Fields<'_>) -> T,
    ) -> Result<T, (u64, String)> {
        let position = row.position;
        if position != self.next_position {
            return Err((
                self.next_position,
                format!(
                    "position {} is missing (the next stored is {position})",
                    self.next_position
                ),
            ));
        }
        let bad = |problem: String| (position, problem);
        let value: Value = serde_json::from_str(row.envelope)
            .map_err(|e| bad(format!("the stored envelope is not valid JSON: {e}")))?;
        let map = value
            .as_object()
            .ok_or_else(|| bad("the stored envelope is not a JSON object".into()))?;
        let (canonical, without_hash) = canonical_with_and_without_hash(map);
        if canonical != row.envelope {
            return Err(bad(describe_difference(row.envelope, &canonical)));
        }
        let fields = Fields::deserialize(&value)
            .map_err(|e| bad(format!("the stored envelope does not have the envelope's fields: {e}")))?;
        let misplaced = fields.position != position;
        if from_text && misplaced {
            return Err(bad(format!(
                "the envelope is position {} but position {position} comes next: events are missing or out of order",
                fields.position
            )));
        }
        let recomputed = chain_hash(&self.prev, &without_hash);
        if recomputed != fields.hash {
            return Err(bad(format!(
                "the envelope's hash is {} but the chain gives {recomputed}",
                fields.hash
            )));
        }
        if misplaced {
            return Err(bad(format!(
                "the envelope says position {} but its row is at position {position}",
                fields.position
            )));
        }
        let column = |name: &str, column: &dyn std::fmt::Display, envelope: &dyn std::fmt::Display| {
            bad(format!(
                "the {name} column is {column:?} but the envelope's {name} is {envelope:?}",
                column = column.to_string(),
                envelope = envelope.to_string()
            ))
        };
        if let Some(stream) = row.stream
            && stream != fields.stream
        {
            return Err(column("stream", &stream, &fields.stream));
        }
        if let Some(version) = row.version
            && version != fields.version
        {
            return Err(column("version", &version, &fields.version));
        }
        if let Some(event_type) = row.event_type
            && event_type != fields.event_type
        {
            return Err(column("type", &event_type, &fields.event_type));
        }
        if let Some(category) = row.category
            && category != category_of(&fields.stream)
        {
            return Err(column("category", &category, &category_of(&fields.stream)));
        }
        if let Some(hash) = row.hash
            && hash != fields.hash
        {
            return Err(column("hash", &hash, &fields.hash));
        }
        if let Some(expect) = &self.expect
            && expect.position == position
            && expect.hash != fields.hash
        {
            return Err(bad(format!(
                "the event at position {position} has hash {} but {} was expected (--expect): the log was rewritten",
                fields.hash, expect.hash
            )));
        }
        Ok(found(fields))
    }

    /// The report, once every row up to the head was passed to
    /// [`check`](Self::check) (or it returned false). `findings` are problems
    /// found besides the rows (e.g. a missing append-only trigger).
    pub fn finish(self, findings: &[String]) -> VerifyReport {
        let head = &self.head;
        let bad = self.bad.or_else(|| {
            if self.checked < head.position {
                Some((
                    self.next_position,
                    format!("position {} is missing", self.next_position),
                ))
            } else if self.prev != head.hash {
                Some((
                    head.position,
                    format!("the head's hash is {} but the last event's is {}", head.hash, self.prev),
                ))
            } else {
                match &self.expect {
                    Some(expect) if expect.position > head.position => Some((
                        head.position + 1,
                        format!(
                            "the log ends at position {} but position {} (hash {}) was expected (--expect): \
                             events were removed from its end",
                            head.position, expect.position, expect.hash
                        ),
                    )),
                    Some(expect) if expect.position == 0 && expect.hash != GENESIS_HASH => Some((
                        0,
                        format!(
                            "position 0 (the empty log) has hash {GENESIS_HASH}, not {}",
                            expect.hash
                        ),
                    )),
                    _ => None,
                }
            }
        });
        let mut problems: Vec<String> = bad.iter().map(|(_, p)| p.clone()).collect();
        problems.extend(findings.iter().cloned());
        VerifyReport {
            ok: problems.is_empty(),
            checked: self.checked,
            head_position: head.position,
            head_hash: head.hash.clone(),
            first_bad_position: bad.map(|(p, _)| p),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}

const PAGE: usize = 1000;

/// Verifies a store through the [`EventStore`] trait: the envelopes and the
/// columns every backend has (position, stream, version, type). Backends that
/// store more check it themselves ([`EventStore::verify`]).
/// `progress` is called after each page with the positions checked so far.
pub async fn verify<S: EventStore + ?Sized>(
    store: &S,
    expect: Option<Expect>,
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<VerifyReport, StoreError> {
    let head = store.head().await?;
    let until = head.position;
    let mut verifier = ChainVerifier::new(head, expect);
    let filter = Filter::default();
    let mut after = 0;
    'pages: while after < until {
        let page = store.read_all(after, &filter, PAGE).await?;
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            if event.position() > until {
                break 'pages;
            }
            let json = std::str::from_utf8(event.json()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if !verifier.check(StoredRow {
                position: event.position(),
                envelope: json,
                stream: Some(event.stream()),
                version: Some(event.version()),
                event_type: Some(event.event_type()),
                category: None,
                hash: None,
            }) {
                break 'pages;
            }
        }
        after = page.next_after;
        progress(verifier.checked(), until);
    }
    Ok(verifier.finish(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ActorKind, Envelope, canonical};

    fn envelope(data: Value) -> Envelope {
        Envelope {
            position: 1,
            id: uuid::Uuid::now_v7(),
            stream: "deployment-a".into(),
            version: 1,
            event_type: "Started".into(),
            schema: 1,
            data,
            actor: Actor {
                kind: ActorKind::User,
                id: "u".into(),
                name: "ü \"q\"".into(),
            },
            command_id: "c".into(),
            correlation_id: "r".into(),
            recorded_at: "2026-01-01T00:00:00.000Z".into(),
            hash: String::new(),
        }
    }

    #[test]
    fn canonical_split_matches_the_canonical_path() {
        for data in [
            serde_json::json!({}),
            serde_json::json!({"hash": "x", "z": [1, 2.5, -0.0, 1e300], "é": "\u{1F600}\n", "a": null}),
            serde_json::json!("text,\"hash\":\"x\""),
        ] {
            let mut env = envelope(data);
            let sealed = env.seal(GENESIS_HASH);
            let value: Value = serde_json::from_str(&sealed).unwrap();
            let (full, without) = canonical_with_and_without_hash(value.as_object().unwrap());
            assert_eq!(full, sealed);
            assert_eq!(full, canonical(&value));
            assert_eq!(without, env.canonical_without_hash());
        }
        // Odd shapes: only `hash`, `hash` first, no `hash`.
        for value in [
            serde_json::json!({"hash": "h"}),
            serde_json::json!({"hash": "h", "z": 1}),
            serde_json::json!({"a": 1, "hash": "h"}),
            serde_json::json!({"a": 1}),
        ] {
            let (full, without) = canonical_with_and_without_hash(value.as_object().unwrap());
            assert_eq!(full, canonical(&value));
            let mut v = value.clone();
            v.as_object_mut().unwrap().remove("hash");
            assert_eq!(without, canonical(&v));
        }
    }

    #[test]
    fn expect_parses_position_and_hash() {
        let e: Expect = format!("7:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(e.position, 7);
        assert!("7".parse::<Expect>().is_err());
        assert!("x:00".parse::<Expect>().is_err());
        assert!(format!("7:{}", "AB".repeat(32)).parse::<Expect>().is_err());
    }
}
