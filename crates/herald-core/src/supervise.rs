//! What every backend's writer shares to survive a panic in one batch
//! (docs/adr/0006-writer-supervision.md): the panic's message, the limit
//! after which it gives up, and the hook it calls then.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Called once, by the writer, when it keeps panicking and stops; the
/// argument says why. The default logs and exits the process with status 70
/// so a supervisor (systemd, Kubernetes) restarts herald; tests pass a hook
/// that records the call instead.
#[derive(Clone)]
pub struct WriterFatal(pub Arc<dyn Fn(&str) + Send + Sync>);

impl Default for WriterFatal {
    fn default() -> Self {
        WriterFatal(Arc::new(|why: &str| {
            tracing::error!(%why, "the event store writer keeps failing; exiting so that a supervisor restarts herald");
            // stderr may be closed: a failed write must not panic here either.
            let _ = writeln!(
                std::io::stderr(),
                "herald: the event store writer keeps failing ({why}); exiting with status 70 so that a supervisor \
                 restarts herald"
            );
            std::process::exit(70);
        }))
    }
}

impl std::fmt::Debug for WriterFatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterFatal(..)")
    }
}

/// The window of [`PanicLimit`]'s second rule.
pub const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// The panics a writer survived lately: it gives up after `limit` with no
/// commit in between, or `limit` within [`PANIC_WINDOW`].
#[derive(Debug)]
pub struct PanicLimit {
    limit: u32,
    /// With no commit since.
    in_a_row: u32,
    /// When, within the window (allocated only once something panicked).
    recent: VecDeque<Instant>,
}

impl PanicLimit {
    /// `limit` is at least 1.
    pub fn new(limit: u32) -> Self {
        PanicLimit {
            limit: limit.max(1),
            in_a_row: 0,
            recent: VecDeque::new(),
        }
    }

    /// A batch committed.
    pub fn committed(&mut self) {
        self.in_a_row = 0;
    }

    /// Records a panic at `now` (its `message`). `Some(why)` when the writer
    /// must give up.
    pub fn panicked(&mut self, now: Instant, message: &str) -> Option<String> {
        self.in_a_row += 1;
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > PANIC_WINDOW)
        {
            self.recent.pop_front();
        }
        let within = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if self.in_a_row >= self.limit {
            Some(format!("{} panics in a row, the last: {message}", self.in_a_row))
        } else if within >= self.limit {
            Some(format!("{within} panics within a minute, the last: {message}"))
        } else {
            None
        }
    }
}

/// What each caller of a batch the writer panicked in is told: the panic, and
/// whether its append may have been committed (then a retry with the same
/// `command_id` returns its result).
pub fn panicked_batch_error(message: &str, committed: bool) -> crate::store::StoreError {
    let fate = if committed {
        "the append may have been committed; retry it with the same command_id to get its result"
    } else {
        "the append was not committed; retry it"
    };
    crate::store::StoreError::Unavailable(format!("the event store writer panicked: {message}; {fate}"))
}

/// A writer past its panic limit gives up: it is marked down, the fatal hook
/// is called (it exits the process), and when the hook returns (a test)
/// nothing more is written — the queue is closed and every job still in it,
/// and every later one, fails through `fail`.
pub fn give_up<J>(
    health: &crate::store::WriterHealth,
    on_fatal: &WriterFatal,
    why: &str,
    jobs: &mut tokio::sync::mpsc::Receiver<J>,
    fail: impl Fn(J, crate::store::StoreError),
) {
    health.set_down(&format!("the event store writer stopped after {why}"));
    (on_fatal.0)(why);
    jobs.close();
    while let Ok(job) = jobs.try_recv() {
        fail(
            job,
            crate::store::StoreError::Unavailable("the event store writer has stopped".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_the_limit_in_a_row_or_within_a_minute() {
        let start = Instant::now();
        let mut limit = PanicLimit::new(3);
        assert_eq!(limit.panicked(start, "a"), None);
        assert_eq!(limit.panicked(start, "b"), None);
        assert_eq!(
            limit.panicked(start, "c").as_deref(),
            Some("3 panics in a row, the last: c")
        );

        // Commits in between: only the window counts.
        let mut limit = PanicLimit::new(3);
        for (i, message) in ["a", "b"].into_iter().enumerate() {
            assert_eq!(limit.panicked(start + Duration::from_secs(i as u64), message), None);
            limit.committed();
        }
        assert_eq!(
            limit.panicked(start + Duration::from_secs(2), "c").as_deref(),
            Some("3 panics within a minute, the last: c")
        );

        // Spread over more than a minute, with commits: never.
        let mut limit = PanicLimit::new(3);
        for i in 0..10 {
            assert_eq!(limit.panicked(start + Duration::from_secs(31 * i), "x"), None, "{i}");
            limit.committed();
        }
    }

    #[test]
    fn the_message_of_any_payload() {
        let of = |f: fn()| panic_message(&*std::panic::catch_unwind(f).unwrap_err());
        assert_eq!(of(|| panic!("static")), "static");
        assert_eq!(of(|| panic!("formatted {}", 1)), "formatted 1");
        assert_eq!(of(|| std::panic::panic_any(7u8)), "a panic without a message");
    }
}
