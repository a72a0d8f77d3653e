//! A one-shot broadcast that every connection waits on (the drain's start, the abort at
//! its deadline), cheap to wait on in a loop.
//!
//! `CancellationToken` locks a mutex to read its flag and `Notify` locks its waiter list
//! at every poll of a registered waiter; a connection polls both at every wake-up (every
//! batch of messages). [`Latch::wait`] registers once and afterwards only loads a flag.
//!
//! Invariants:
//! - once [`Latch::fire`] returns, every wait, begun before or after, completes: the flag
//!   is set before the waiters are woken, and a wait checks the flag after registering;
//! - a wait keeps the waker of its first pending poll. Every future in this daemon is
//!   polled by one tokio task for its whole life, and any waker of a task wakes it.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio::sync::Notify;

/// Fired once, waited on by many.
#[derive(Debug, Default)]
pub struct Latch {
    /// Set when fired; never cleared.
    fired: AtomicBool,
    /// Wakes the waiters.
    notify: Notify,
}

impl Latch {
    /// A latch not fired yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires it: every wait completes.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether it has fired.
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once it has fired. After the first pending poll, a poll is one load.
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        let mut registered = false;
        poll_fn(|cx| {
            if self.is_fired() {
                return Poll::Ready(());
            }
            if !registered {
                registered = true;
                // Registers this task; `fire` wakes it from now on. The flag is checked
                // again: a fire between the check above and the registration is not lost.
                if notified.as_mut().poll(cx).is_ready() || self.is_fired() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waits_begun_before_and_after_the_fire_complete() {
        let latch = Arc::new(Latch::new());
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let l = latch.clone();
            waiting.push(tokio::spawn(async move { l.wait().await }));
        }
        // Let every waiter register and go idle.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!latch.is_fired());
        assert!(waiting.iter().all(|t| !t.is_finished()));
        latch.fire();
        for t in waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .expect("the fire wakes every waiter")
                .unwrap();
        }
        assert!(latch.is_fired());
        latch.wait().await;
    }

    #[tokio::test]
    async fn a_wait_polled_many_times_before_the_fire_still_wakes() {
        let latch = Arc::new(Latch::new());
        let l = latch.clone();
        let waiter = tokio::spawn(async move {
            let wait = l.wait();
            tokio::pin!(wait);
            // Poll the wait again and again in one task, as a connection's loop does.
            let mut polls = 0;
            while polls < 5 {
                tokio::select! {
                    biased;
                    () = &mut wait => return polls,
                    () = tokio::task::yield_now() => polls += 1,
                }
            }
            wait.await;
            polls
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        latch.fire();
        let polls = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the fire wakes the waiter")
            .unwrap();
        assert_eq!(polls, 5);
    }
}
