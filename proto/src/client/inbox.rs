//! Per-job inboxes and the tag-keyed maps of the client's reader.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

pub(super) type ByTag<V> = crate::hash::FastMap<u64, V>;

/// One job's answers on their way to its `JobHandle`: parts, then the
/// final answer. Not a channel per job: tokio's unbounded channel
/// allocates a block for 32 events (some 3 KiB) for each, which a client
/// with thousands of jobs a second pays in `malloc`.
pub(super) struct Inbox<T> {
    state: Mutex<InboxState<T>>,
    notify: Notify,
}

struct InboxState<T> {
    /// The oldest event, kept out of `rest` while it is the only one: most
    /// jobs get one event (their answer), and a queue allocates for it.
    first: Option<T>,
    /// Events after `first`.
    rest: VecDeque<T>,
    /// No more events will come (the final one is in, or the connection is
    /// gone).
    closed: bool,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                first: None,
                rest: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
        }
    }
}

impl<T> Inbox<T> {
    /// Adds an event; `last`: no more will come.
    pub(super) fn push(&self, event: T, last: bool) {
        {
            let mut state = self.state.lock().expect("inbox lock");
            if state.first.is_none() && state.rest.is_empty() {
                state.first = Some(event);
            } else {
                state.rest.push_back(event);
            }
            state.closed |= last;
        }
        self.notify.notify_one();
    }

    /// No more events will come.
    pub(super) fn close(&self) {
        self.state.lock().expect("inbox lock").closed = true;
        self.notify.notify_one();
    }

    /// The next event, or `None` once the inbox is closed and empty.
    pub(super) async fn next(&self) -> Option<T> {
        loop {
            {
                let mut state = self.state.lock().expect("inbox lock");
                if let Some(event) = state.first.take().or_else(|| state.rest.pop_front()) {
                    return Some(event);
                }
                if state.closed {
                    return None;
                }
            }
            // A push between the check and here left a permit: no wake-up
            // is lost.
            self.notify.notified().await;
        }
    }
}
