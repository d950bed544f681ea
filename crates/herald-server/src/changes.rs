//! What the consumer runner publishes and resource streams read: the
//! resources changed in a read model between two of its checkpoints, each
//! frame encoded once. A leaf.

use std::ops::Range;

use bytes::Bytes;

/// Resources changed in a read model, pre-encoded as SSE frames.
#[derive(Debug)]
pub struct ResourceBatch {
    /// The projection that published it.
    pub projection: &'static str,
    /// The log position the states reflect: every change at or before it has
    /// been published (in this batch or an earlier one). Each frame's `id`.
    pub position: u64,
    /// `id: {position}\nevent: {event}\ndata: {json}\n\n` per entry, back to back.
    pub frames: Bytes,
    /// One per frame, in the order of `frames`: sorted by `kind`, then by `changed_at`.
    pub entries: Vec<ResourceEntry>,
}

/// One changed resource in a [`ResourceBatch`].
#[derive(Debug, Clone)]
pub struct ResourceEntry {
    pub kind: &'static str,
    pub key: Box<str>,
    /// The position of the last event that changed it.
    pub changed_at: u64,
    /// See `herald_store::projection::ChangedResource::class`.
    pub class: Option<&'static str>,
    /// Where its frame is in `frames`.
    pub range: Range<usize>,
}

impl ResourceBatch {
    /// The frame of `entry`, shared.
    pub fn frame(&self, entry: &ResourceEntry) -> Bytes {
        self.frames.slice(entry.range.clone())
    }
}
