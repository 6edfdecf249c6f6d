//! Where the SDK's time comes from: every timestamp it writes and every wait
//! it makes (send retry backoff, link polling, WebSocket reconnects, the end
//! of a `listen`) goes through the [`Clock`] a `Client` is given.
//!
//! [`SystemClock`] is the wall clock and tokio's timer; [`ManualClock`] is
//! virtual time that moves only when told to, so tests and simulations run
//! real clients through hours of timers without sleeping.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A wait handed out by [`Clock::sleep`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the time comes from: the system clock, or a simulation's.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
    /// A future that completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The system clock, with tokio's timer for waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Virtual time: starts where it is told and moves only by
/// [`ManualClock::advance`] or [`ManualClock::set`], which wake the sleeps
/// that became due. Nothing ever waits on the wall clock.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

#[derive(Debug, Default)]
struct ManualState {
    now_ms: u64,
    /// Pending sleeps by (deadline, id) with the waker of their last poll;
    /// the id tells apart sleeps that end at the same millisecond.
    sleepers: BTreeMap<(u64, u64), Option<Waker>>,
    next_id: u64,
}

fn lock(state: &Mutex<ManualState>) -> MutexGuard<'_, ManualState> {
    // A panic elsewhere while holding this lock leaves a time value and
    // wakers, both still consistent; keep going.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(ManualState {
                now_ms,
                ..ManualState::default()
            })),
        }
    }

    /// Moves time forward by `duration`, waking every sleep due by then.
    pub fn advance(&self, duration: Duration) {
        let now = self.now_ms().saturating_add(duration.as_millis() as u64);
        self.set(now);
    }

    /// Sets the time (never backwards), waking every sleep due by then.
    pub fn set(&self, now_ms: u64) {
        let wakers: Vec<Waker> = {
            let mut state = lock(&self.state);
            state.now_ms = state.now_ms.max(now_ms);
            let first_later = (state.now_ms.saturating_add(1), 0);
            let later = state.sleepers.split_off(&first_later);
            let due = std::mem::replace(&mut state.sleepers, later);
            due.into_values().flatten().collect()
        };
        // Woken outside the lock: a woken task may read the clock at once.
        for waker in wakers {
            waker.wake();
        }
    }

    /// When the earliest pending sleep ends, if any: where a simulation
    /// driver jumps to when nothing else is due.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        lock(&self.state).sleepers.keys().next().map(|&(at, _)| at)
    }

    /// How many sleeps are pending.
    pub fn sleepers(&self) -> usize {
        lock(&self.state).sleepers.len()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        lock(&self.state).now_ms
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let mut state = lock(&self.state);
        let deadline = state.now_ms.saturating_add(duration.as_millis() as u64);
        let id = state.next_id;
        state.next_id += 1;
        if deadline > state.now_ms {
            state.sleepers.insert((deadline, id), None);
        }
        Box::pin(ManualSleep {
            state: self.state.clone(),
            key: (deadline, id),
        })
    }
}

/// One pending [`ManualClock`] sleep.
struct ManualSleep {
    state: Arc<Mutex<ManualState>>,
    key: (u64, u64),
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.state);
        if state.now_ms >= self.key.0 {
            state.sleepers.remove(&self.key);
            return Poll::Ready(());
        }
        state.sleepers.insert(self.key, Some(cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    // A sleep given up (a timeout that lost its race) stops counting as
    // pending, so `next_deadline_ms` names only live waits.
    fn drop(&mut self) {
        lock(&self.state).sleepers.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_time_is_advanced_past_it() {
        let clock = ManualClock::new(1_000);
        let mut sleep = clock.sleep(Duration::from_millis(500));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert_eq!(clock.next_deadline_ms(), Some(1_500));
        clock.advance(Duration::from_millis(499));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        clock.advance(Duration::from_millis(1));
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(clock.now_ms(), 1_500);
    }

    #[test]
    fn a_dropped_sleep_is_no_longer_pending() {
        let clock = ManualClock::new(0);
        let sleep = clock.sleep(Duration::from_secs(1));
        assert_eq!(clock.sleepers(), 1);
        drop(sleep);
        assert_eq!(clock.next_deadline_ms(), None);
    }
}
