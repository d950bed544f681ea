//! Resource streams (API.md §6): a resource's current state first, then its
//! state again after each change, resumable with `Last-Event-ID`.
//!
//! The consumer runner (`consumers.rs`) publishes, per projection, the
//! resources that changed between two of its checkpoints as one
//! [`ResourceBatch`]: every frame encoded once, shared by every subscriber.

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
