//! Catch-up subscriptions: replay from a position, then continue live, with no
//! gap and no duplicate. Works for any [`EventStore`].
//!
//! The order matters: subscribe to the live channel *before* reading the store,
//! so every batch committed after the read is in the channel; drop what the read
//! already delivered by position. A live batch that does not start right after
//! the last position examined sends the reader back to the store.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use crate::envelope::RecordedEvent;
use crate::store::{EventStore, Filter, LiveReceiver, StoreError};

/// What to do when the live channel overflows for this reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagPolicy {
    /// Read the missed events from the store and carry on (projectors, in-process readers).
    CatchUp,
    /// End the subscription with [`SubscriptionError::Lagged`] (remote clients, who resume).
    Disconnect,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("subscriber fell too far behind the live stream")]
    Lagged,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Events delivered together.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub events: Vec<Arc<RecordedEvent>>,
    /// When the chunk is a whole committed batch, every event's frame back to back
    /// (shared by every reader that gets the whole batch).
    pub frames: Option<Bytes>,
    /// The position the reader has examined up to (≥ the last event's position).
    pub examined: u64,
}

pub const CATCH_UP_PAGE: usize = 1000;

pub struct Subscription {
    store: Arc<dyn EventStore>,
    filter: Filter,
    policy: LagPolicy,
    /// Last position examined.
    last: u64,
    rx: Option<LiveReceiver>,
    live: bool,
    /// Live batches received since the last catch-up.
    live_batches: u64,
}

impl Subscription {
    pub fn new(store: Arc<dyn EventStore>, after: u64, filter: Filter, policy: LagPolicy) -> Self {
        Subscription {
            store,
            filter,
            policy,
            last: after,
            rx: None,
            live: false,
            live_batches: 0,
        }
    }

    /// The last position examined: a reader that resumes passes it as `after`.
    pub fn position(&self) -> u64 {
        self.last
    }

    /// Whether the subscription has caught up and is reading the live channel.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The next events, waiting for them when caught up. `None` when the store shut down.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, SubscriptionError> {
        loop {
            if !self.live {
                if self.rx.is_none() {
                    self.rx = Some(self.store.live());
                }
                let page = self.store.read_all(self.last, &self.filter, CATCH_UP_PAGE).await?;
                self.last = self.last.max(page.next_after);
                if self.last >= page.head {
                    self.live = true;
                    self.live_batches = 0;
                }
                if !page.events.is_empty() {
                    return Ok(Some(Chunk {
                        events: page.events,
                        frames: None,
                        examined: self.last,
                    }));
                }
                continue;
            }
            let rx = self.rx.as_mut().expect("live implies a receiver");
            match rx.recv().await {
                Ok(batch) => {
                    self.live_batches += 1;
                    if batch.last_position() <= self.last {
                        continue; // already read from the store
                    }
                    if batch.first_position() > self.last + 1 {
                        // Something between is not in the channel: read it from the store.
                        self.live = false;
                        continue;
                    }
                    let whole = batch.first_position() == self.last + 1
                        && (self.filter.is_empty() || batch.events.iter().all(|e| self.filter.matches(e)));
                    let examined = batch.last_position();
                    let chunk = if whole {
                        Chunk {
                            events: batch.events.clone(),
                            frames: Some(batch.frames.clone()),
                            examined,
                        }
                    } else {
                        let last = self.last;
                        Chunk {
                            events: batch
                                .events
                                .iter()
                                .filter(|e| e.position() > last && self.filter.matches(e))
                                .cloned()
                                .collect(),
                            frames: None,
                            examined,
                        }
                    };
                    self.last = examined;
                    if !chunk.events.is_empty() {
                        return Ok(Some(chunk));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // A receiver may overflow while the catch-up reads run; that is
                    // not the reader being slow.
                    let slow = self.live_batches > 0;
                    if slow && self.policy == LagPolicy::Disconnect {
                        return Err(SubscriptionError::Lagged);
                    }
                    self.rx = None;
                    self.live = false;
                }
                Err(RecvError::Closed) => return Ok(None),
            }
        }
    }
}
