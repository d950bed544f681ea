//! Walks the hash chain from the stored rows (API.md §3, `herald verify`).

use serde::Serialize;

use crate::envelope::{GENESIS_HASH, recompute_hash};
use crate::store::{EventStore, Filter, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events checked.
    pub checked: u64,
    pub head_position: u64,
    pub head_hash: String,
    /// The first position whose stored envelope does not match the chain.
    pub first_bad_position: Option<u64>,
    /// Why that position is bad (not part of the public report).
    #[serde(skip)]
    pub problem: Option<String>,
}

const PAGE: usize = 1000;

/// Recomputes every hash from position 1 to the head, stopping at the first bad one.
/// `progress` is called after each page with the positions checked so far.
pub async fn verify(store: &dyn EventStore, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport, StoreError> {
    let head = store.head().await?;
    let mut prev = GENESIS_HASH.to_owned();
    let mut expected_position = 1;
    let mut checked = 0;
    let filter = Filter::default();
    let bad = |position: u64, checked: u64, problem: String| VerifyReport {
        ok: false,
        checked,
        head_position: head.position,
        head_hash: head.hash.clone(),
        first_bad_position: Some(position),
        problem: Some(problem),
    };
    let mut after = 0;
    while after < head.position {
        let page = store.read_all(after, &filter, PAGE).await?;
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            if event.position() > head.position {
                break;
            }
            if event.position() != expected_position {
                return Ok(bad(
                    expected_position,
                    checked,
                    format!("position {expected_position} is missing (next is {})", event.position()),
                ));
            }
            let (recomputed, claimed) = match recompute_hash(&prev, event.json()) {
                Ok(pair) => pair,
                Err(e) => return Ok(bad(event.position(), checked, e.to_string())),
            };
            if recomputed != claimed {
                return Ok(bad(
                    event.position(),
                    checked,
                    format!("stored hash {claimed} but the chain gives {recomputed}"),
                ));
            }
            match event.envelope() {
                Ok(env)
                    if env.position == event.position()
                        && env.stream == event.stream()
                        && env.version == event.version() => {}
                Ok(_) => {
                    return Ok(bad(
                        event.position(),
                        checked,
                        "the envelope's position, stream or version differs from its row".into(),
                    ));
                }
                Err(e) => return Ok(bad(event.position(), checked, e.to_string())),
            }
            prev = claimed;
            checked += 1;
            expected_position += 1;
        }
        after = page.next_after;
        progress(checked, head.position);
    }
    if checked < head.position {
        return Ok(bad(
            expected_position,
            checked,
            format!("position {expected_position} is missing"),
        ));
    }
    if prev != head.hash {
        return Ok(bad(
            head.position,
            checked,
            "the head hash differs from the last event's".into(),
        ));
    }
    Ok(VerifyReport {
        ok: true,
        checked,
        head_position: head.position,
        head_hash: head.hash,
        first_bad_position: None,
        problem: None,
    })
}
