//! The discrete-event core: virtual time in milliseconds and a queue of
//! events ordered by (time, insertion sequence). The sequence number breaks
//! ties, so two events at the same millisecond always run in the order they
//! were scheduled — never in heap or hash order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A scheduled event.
#[derive(Debug)]
struct Entry<E> {
    at_ms: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.at_ms == other.at_ms && self.seq == other.seq
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    // Reversed: BinaryHeap is a max-heap and we pop the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

/// A virtual clock and the events waiting on it.
#[derive(Debug)]
pub struct EventQueue<E> {
    now_ms: u64,
    next_seq: u64,
    heap: BinaryHeap<Entry<E>>,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> EventQueue<E> {
    /// An empty queue at time 0.
    pub fn new() -> Self {
        EventQueue {
            now_ms: 0,
            next_seq: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// The current virtual time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `event` at absolute time `at_ms` (clamped to now: the past
    /// cannot be scheduled).
    pub fn at(&mut self, at_ms: u64, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry {
            at_ms: at_ms.max(self.now_ms),
            seq,
            event,
        });
    }

    /// Schedules `event` `delay_ms` from now.
    pub fn after(&mut self, delay_ms: u64, event: E) {
        self.at(self.now_ms.saturating_add(delay_ms), event);
    }

    /// The time of the next event.
    pub fn peek_ms(&self) -> Option<u64> {
        self.heap.peek().map(|e| e.at_ms)
    }

    /// Removes the next event and advances the clock to it.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        let e = self.heap.pop()?;
        self.now_ms = e.at_ms;
        Some((e.at_ms, e.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pop_in_time_then_schedule_order() {
        let mut q = EventQueue::new();
        q.at(10, "b1");
        q.at(5, "a");
        q.at(10, "b2");
        q.at(10, "b3");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b1", "b2", "b3"]);
        assert_eq!(q.now_ms(), 10);
    }

    #[test]
    fn past_is_clamped_to_now() {
        let mut q = EventQueue::new();
        q.at(100, 1);
        q.pop();
        q.at(50, 2);
        assert_eq!(q.pop(), Some((100, 2)));
    }
}
