//! What the consumer runner publishes and resource streams read: the
//! resources changed in a read model between two of its checkpoints, each
//! frame encoded once. A leaf.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Batches a channel holds for its slowest subscriber (beyond: it is ended,
/// and resumes with `Last-Event-ID`).
const CAPACITY: usize = 1024;

/// One broadcast channel per resource kind, so a stream wakes only for
/// batches of the kind it follows (a deployments dashboard not for every
/// post edit).
#[derive(Debug, Default)]
pub struct ResourceChannels {
    by_kind: Mutex<HashMap<&'static str, broadcast::Sender<Arc<ResourceBatch>>>>,
}

impl ResourceChannels {
    fn sender(&self, kind: &'static str) -> broadcast::Sender<Arc<ResourceBatch>> {
        let mut by_kind = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        by_kind
            .entry(kind)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .clone()
    }

    pub fn subscribe(&self, kind: &'static str) -> broadcast::Receiver<Arc<ResourceBatch>> {
        self.sender(kind).subscribe()
    }

    /// Sends a batch of resources of `kind` (an error when nobody follows it).
    pub fn send(
        &self,
        kind: &'static str,
        batch: Arc<ResourceBatch>,
    ) -> Result<usize, broadcast::error::SendError<Arc<ResourceBatch>>> {
        self.sender(kind).send(batch)
    }

    /// Whether any resource stream of this process is open.
    pub fn has_subscribers(&self) -> bool {
        let by_kind = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        by_kind.values().any(|s| s.receiver_count() > 0)
    }
}

/// Resources changed in a read model, pre-encoded as SSE frames.
#[derive(Debug)]
pub struct ResourceBatch {
    /// The projection that published it.
    pub projection: &'static str,
    /// The log position the states reflect: every change at or before it has
    /// been published (in this batch or an earlier one). A frame's `id` is its
    /// resource's ([`ResourceEntry::id`]).
    pub position: u64,
    /// `id: {id}\nevent: {event}\ndata: {json}\n\n` per entry, back to back.
    pub frames: Bytes,
    /// One per frame, in the order of `frames`: sorted by `kind`, then by `changed_at`.
    pub entries: Vec<ResourceEntry>,
    /// `entries`' indexes sorted by `(kind, key)`: a stream of one resource
    /// finds its entry by binary search (a resource is in a batch once).
    by_key: Vec<usize>,
}

/// One changed resource in a [`ResourceBatch`].
#[derive(Debug, Clone)]
pub struct ResourceEntry {
    pub kind: &'static str,
    pub key: Box<str>,
    /// The position of the last event that changed it.
    pub changed_at: u64,
    /// Its frame's `id` (`consumers::resume_id`): `changed_at`, or the
    /// position before it when the next entry of its kind changed at the same.
    pub id: u64,
    /// When `id` is not `changed_at`: `id: {changed_at}\n`, made once per
    /// batch — what a stream of this resource alone sends instead of the
    /// frame's `id:` line (alone, it is as of its own change).
    pub alone_id: Option<Bytes>,
    /// See `herald_store::projection::ChangedResource::class`.
    pub class: Option<&'static str>,
    /// Where its frame is in `frames`.
    pub range: Range<usize>,
}

impl ResourceBatch {
    /// A batch of `entries` (sorted by `kind`, then `changed_at`) over `frames`.
    pub fn new(projection: &'static str, position: u64, frames: Bytes, entries: Vec<ResourceEntry>) -> Self {
        let mut by_key: Vec<usize> = (0..entries.len()).collect();
        by_key.sort_by(|&a, &b| (entries[a].kind, &*entries[a].key).cmp(&(entries[b].kind, &*entries[b].key)));
        ResourceBatch {
            projection,
            position,
            frames,
            entries,
            by_key,
        }
    }

    /// The entry of resource `key` of `kind`, if it changed in this batch.
    pub fn find(&self, kind: &str, key: &str) -> Option<&ResourceEntry> {
        let i = self
            .by_key
            .binary_search_by(|&i| (self.entries[i].kind, &*self.entries[i].key).cmp(&(kind, key)))
            .ok()?;
        self.entries.get(self.by_key[i])
    }

    /// The frame of `entry`, shared.
    pub fn frame(&self, entry: &ResourceEntry) -> Bytes {
        self.frames.slice(entry.range.clone())
    }

    /// The frame of `entry` after its `id:` line, shared.
    pub fn frame_after_id(&self, entry: &ResourceEntry) -> Bytes {
        let frame = &self.frames[entry.range.clone()];
        let id_line = frame.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.frames.slice(entry.range.start + id_line..entry.range.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_hears_only_the_batches_of_its_kind() {
        let channels = ResourceChannels::default();
        assert!(!channels.has_subscribers());
        let mut deployments = channels.subscribe("deployment");
        assert!(channels.has_subscribers());
        let batch = |p| Arc::new(ResourceBatch::new("test", p, Bytes::new(), Vec::new()));
        assert!(channels.send("post", batch(1)).is_err(), "nobody follows posts");
        channels.send("deployment", batch(2)).expect("a subscriber");
        assert_eq!(deployments.try_recv().expect("its batch").position, 2);
        assert!(deployments.try_recv().is_err(), "the post batch never reached it");
    }
}
