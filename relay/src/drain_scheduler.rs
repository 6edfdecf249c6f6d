//! When to look at the outbox and how many delivery workers to run per
//! destination: the drainer's rules as a sans-IO state machine. The node's
//! tokio drainer (and the simulator) reports what happened — destinations
//! woken by new entries, a look's result, a worker's end, time passing —
//! and does what [`DrainScheduler::poll_action`] asks, sleeping until
//! [`DrainScheduler::poll_timeout`] at the latest. Times are the relay
//! clock's milliseconds, passed in.

use std::collections::BTreeMap;

use courier_protocol::RelayName;

use crate::store::OutboxDue;
use crate::{Relay, RelayError};

/// The scheduler's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSchedule {
    /// Entries one worker round takes (at most `BATCH_ENVELOPES_MAX`).
    pub batch_max: u32,
    /// Most concurrent workers per destination.
    pub workers_per_destination: usize,
    /// Longest time between two looks at the outbox when nothing wakes it.
    pub idle_poll_ms: u64,
    /// How often expired entries are turned into failure notices.
    pub expire_every_ms: u64,
    /// How often the outbox totals behind the send path's limits are
    /// re-read from the store.
    pub budget_sync_every_ms: u64,
    /// Shortest time between two looks while every woken destination
    /// already has a worker (those workers take the new entries).
    pub scan_gap_ms: u64,
    /// Most due entries one look reads.
    pub due_entries_max: u32,
    /// Most destinations one look starts workers for.
    pub due_destinations_max: u32,
}

impl Default for DrainSchedule {
    /// The shipped schedule (the node's drainer and the simulator run it).
    fn default() -> Self {
        DrainSchedule {
            batch_max: 256,
            // Each round waits for two commits here and one at the peer;
            // 4 rounds in flight left the outbox behind the accept rate
            // (docs/performance.md, federation), 8 keep up.
            workers_per_destination: 8,
            idle_poll_ms: 500,
            expire_every_ms: 5_000,
            budget_sync_every_ms: 60_000,
            // Bounds looks to ~100/s under load (docs/performance.md,
            // "The security hardening, before and after").
            scan_gap_ms: 10,
            due_entries_max: 4096,
            due_destinations_max: 64,
        }
    }
}

/// Something the driver must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainAction {
    /// Re-read the outbox totals (`Relay::outbox_budget_sync`).
    SyncBudget,
    /// Expire entries past their deadline (`Relay::outbox_expire`).
    Expire,
    /// Look at the outbox (`Store::outbox_due(now, entries_max,
    /// destinations_max)`) and report it to [`DrainScheduler::scanned`].
    Scan {
        /// Most due entries to read.
        entries_max: u32,
        /// Most destinations to read.
        destinations_max: u32,
    },
}

/// The drainer's schedule: due looks, worker fan-out, expiry and budget
/// sync cadence.
#[derive(Debug, Clone)]
pub struct DrainScheduler {
    config: DrainSchedule,
    /// Workers running per destination.
    active: BTreeMap<RelayName, usize>,
    last_expire_ms: u64,
    /// `None` until the first sync, which is due at once.
    last_sync_ms: Option<u64>,
    /// A look is due at once: something may need a new worker (start, a
    /// destination without one, a worker's end, retries falling due).
    scan_now: bool,
    /// A wake-up for destinations already draining owes one look, made
    /// `scan_gap_ms` after the previous one.
    owed: bool,
    last_scan_ms: u64,
    /// When the earliest retry falls due (or the idle poll), after a look.
    wake_at_ms: u64,
}

impl DrainScheduler {
    /// A scheduler starting at `now_ms`: the first look and budget sync are
    /// due at once.
    pub fn new(config: DrainSchedule, now_ms: u64) -> Self {
        DrainScheduler {
            config,
            active: BTreeMap::new(),
            last_expire_ms: now_ms,
            last_sync_ms: None,
            scan_now: true,
            owed: false,
            last_scan_ms: now_ms,
            wake_at_ms: now_ms,
        }
    }

    /// Workers running for `dest`.
    pub fn workers(&self, dest: &RelayName) -> usize {
        self.active.get(dest).copied().unwrap_or(0)
    }

    /// New outbox entries for `relays`: a destination without a worker
    /// needs a look now; the others owe one within the scan gap.
    pub fn woken<'a>(&mut self, relays: impl IntoIterator<Item = &'a RelayName>) {
        for relay in relays {
            self.owed = true;
            if !self.active.contains_key(relay) {
                self.scan_now = true;
            }
        }
    }

    fn scan_at(&self, now_ms: u64) -> Option<u64> {
        if self.scan_now {
            Some(now_ms)
        } else if self.owed {
            Some(self.last_scan_ms + self.config.scan_gap_ms)
        } else {
            None
        }
    }

    /// The next thing to do at `now_ms`, if any: budget sync, expiry, then
    /// a look at the outbox.
    pub fn poll_action(&mut self, now_ms: u64) -> Option<DrainAction> {
        let sync_every = self.config.budget_sync_every_ms;
        if self
            .last_sync_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= sync_every)
        {
            self.last_sync_ms = Some(now_ms);
            return Some(DrainAction::SyncBudget);
        }
        if now_ms.saturating_sub(self.last_expire_ms) >= self.config.expire_every_ms {
            self.last_expire_ms = now_ms;
            return Some(DrainAction::Expire);
        }
        if self.scan_at(now_ms).is_some_and(|at| at <= now_ms) {
            (self.scan_now, self.owed) = (false, false);
            self.last_scan_ms = now_ms;
            // Until the look reports, the idle poll is the fallback.
            self.wake_at_ms = now_ms + self.config.idle_poll_ms;
            return Some(DrainAction::Scan {
                entries_max: self.config.due_entries_max,
                destinations_max: self.config.due_destinations_max,
            });
        }
        None
    }

    /// What the look made at `now_ms` found (`None` if it failed): returns
    /// the destinations to start a worker for, one entry per worker. A
    /// destination gets one worker per `batch_max` due entries, at least
    /// one and at most `workers_per_destination`, counting those running.
    pub fn scanned(&mut self, now_ms: u64, due: Option<&OutboxDue>) -> Vec<RelayName> {
        let mut sleep = self.config.idle_poll_ms;
        let mut start = Vec::new();
        if let Some(due) = due {
            if let Some(next) = due.next_due_ms {
                sleep = sleep.min(next.saturating_sub(now_ms));
            }
            let per_worker = u64::from(self.config.batch_max.max(1));
            let most = self.config.workers_per_destination.max(1);
            for d in &due.destinations {
                let running = self.workers(&d.relay);
                let wanted = (d.pending.div_ceil(per_worker) as usize).clamp(1, most);
                for _ in running..wanted {
                    start.push(d.relay.clone());
                }
                if wanted > running {
                    self.active.insert(d.relay.clone(), wanted);
                }
            }
        }
        self.wake_at_ms = self.last_scan_ms + sleep;
        start
    }

    /// A worker ended (`None`: one whose destination is not known, e.g. it
    /// panicked). When its destination has none left the outbox is looked
    /// at again at once: entries may have come in after its last round,
    /// and their wake-up found it still running.
    pub fn worker_finished(&mut self, dest: Option<&RelayName>) {
        let Some(n) = dest.and_then(|d| self.active.get_mut(d)) else {
            self.scan_now = true;
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            if let Some(dest) = dest {
                self.active.remove(dest);
            }
            self.scan_now = true;
        }
    }

    /// The driver's timer fired at `now_ms`: retries may have fallen due,
    /// and nothing but time tells us of those.
    pub fn timer_fired(&mut self, now_ms: u64) {
        if now_ms >= self.wake_at_ms {
            self.scan_now = true;
        }
    }

    /// When to wake at the latest if nothing else happens (then call
    /// [`DrainScheduler::timer_fired`] and [`DrainScheduler::poll_action`]).
    pub fn poll_timeout(&self, now_ms: u64) -> u64 {
        let scan = match self.scan_at(now_ms) {
            Some(at) if at > now_ms => at.min(self.wake_at_ms),
            _ => self.wake_at_ms,
        };
        let expire = self.last_expire_ms + self.config.expire_every_ms;
        let sync = self
            .last_sync_ms
            .map_or(now_ms, |t| t + self.config.budget_sync_every_ms);
        scan.min(expire).min(sync)
    }
}

/// What carrying out one [`DrainAction`] did (see [`perform`]).
#[derive(Debug, Default)]
pub struct Performed {
    /// Destinations to start a delivery worker for, one entry per worker.
    pub start: Vec<RelayName>,
    /// Outbox entries expired (their senders were sent failure notices).
    pub expired: u32,
    /// The store error that cut the action short, for the driver to log.
    pub error: Option<RelayError>,
}

/// Carries out `action` on `relay` at `now_ms` — a budget sync, an expiry
/// pass, or a bounded, due-ordered look at the outbox whose result goes to
/// `schedule` — the one way the node's drainer and the simulator act on
/// the schedule. Starting the workers is the driver's (tokio tasks, or
/// simulated ones).
pub async fn perform(
    relay: &Relay,
    schedule: &mut DrainScheduler,
    action: DrainAction,
    now_ms: u64,
) -> Performed {
    let mut done = Performed::default();
    match action {
        DrainAction::SyncBudget => done.error = relay.outbox_budget_sync().await.err(),
        DrainAction::Expire => match relay.outbox_expire().await {
            Ok(n) => done.expired = n,
            Err(e) => done.error = Some(e),
        },
        DrainAction::Scan {
            entries_max,
            destinations_max,
        } => {
            let due = match relay
                .store()
                .outbox_due(now_ms, entries_max, destinations_max)
                .await
            {
                Ok(due) => Some(due),
                Err(e) => {
                    done.error = Some(e);
                    None
                }
            };
            done.start = schedule.scanned(now_ms, due.as_ref());
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxDestination;

    fn name(text: &str) -> RelayName {
        text.parse().unwrap()
    }

    fn schedule() -> DrainSchedule {
        DrainSchedule {
            batch_max: 100,
            workers_per_destination: 4,
            idle_poll_ms: 500,
            expire_every_ms: 5000,
            budget_sync_every_ms: 60_000,
            scan_gap_ms: 10,
            due_entries_max: 4096,
            due_destinations_max: 64,
        }
    }

    fn due(destinations: &[(&str, u64)], next_due_ms: Option<u64>) -> OutboxDue {
        OutboxDue {
            destinations: destinations
                .iter()
                .map(|(relay, pending)| OutboxDestination {
                    relay: name(relay),
                    pending: *pending,
                    next_attempt_ms: 0,
                })
                .collect(),
            next_due_ms,
        }
    }

    /// Drives the start: budget sync, then a look, reported as `found`.
    fn started(s: &mut DrainScheduler, now: u64, found: &OutboxDue) -> Vec<RelayName> {
        assert_eq!(s.poll_action(now), Some(DrainAction::SyncBudget));
        assert!(matches!(s.poll_action(now), Some(DrainAction::Scan { .. })));
        s.scanned(now, Some(found))
    }

    #[test]
    fn workers_follow_the_backlog_at_least_one_at_most_the_cap() {
        let mut s = DrainScheduler::new(schedule(), 0);
        let start = started(
            &mut s,
            0,
            &due(
                &[("b.example", 1), ("c.example", 250), ("d.example", 10_000)],
                None,
            ),
        );
        let count = |n: &str| start.iter().filter(|d| **d == name(n)).count();
        assert_eq!(
            (count("b.example"), count("c.example"), count("d.example")),
            (1, 3, 4)
        );
        // Running workers count: a bigger backlog tops C up to the cap only.
        s.timer_fired(500);
        assert!(matches!(s.poll_action(500), Some(DrainAction::Scan { .. })));
        let more = s.scanned(500, Some(&due(&[("c.example", 1000)], None)));
        assert_eq!(more, vec![name("c.example")]);
        assert_eq!(s.workers(&name("c.example")), 4);
    }

    #[test]
    fn a_wake_for_an_idle_destination_looks_at_once_a_busy_one_within_the_gap() {
        let mut s = DrainScheduler::new(schedule(), 0);
        started(&mut s, 0, &due(&[("b.example", 1)], None));
        assert_eq!(s.poll_action(1), None);
        // B has a worker: its wake-up owes one look, scan_gap after the last.
        s.woken([&name("b.example")]);
        assert_eq!(s.poll_action(5), None);
        assert_eq!(s.poll_timeout(5), 10);
        assert!(matches!(s.poll_action(10), Some(DrainAction::Scan { .. })));
        s.scanned(10, Some(&due(&[], None)));
        // C has none: looked at now.
        s.woken([&name("c.example")]);
        assert!(matches!(s.poll_action(11), Some(DrainAction::Scan { .. })));
    }

    #[test]
    fn the_end_of_a_destinations_last_worker_looks_again_at_once() {
        let mut s = DrainScheduler::new(schedule(), 0);
        let start = started(&mut s, 0, &due(&[("b.example", 150)], None));
        assert_eq!(start.len(), 2);
        // An entry for B while its workers run is left to them...
        s.woken([&name("b.example")]);
        s.worker_finished(Some(&name("b.example")));
        assert_eq!(s.poll_action(1), None, "one worker still runs");
        // ...until the last ends: then it must not wait for a timer.
        s.worker_finished(Some(&name("b.example")));
        assert_eq!(s.workers(&name("b.example")), 0);
        assert!(matches!(s.poll_action(2), Some(DrainAction::Scan { .. })));
        // A worker of unknown destination: look too.
        s.scanned(2, None);
        s.worker_finished(None);
        assert!(matches!(s.poll_action(3), Some(DrainAction::Scan { .. })));
    }

    #[test]
    fn next_look_at_the_earliest_due_retry_or_the_idle_poll() {
        let mut s = DrainScheduler::new(schedule(), 0);
        started(&mut s, 1000, &due(&[], Some(1200)));
        assert_eq!(s.poll_timeout(1000), 1200);
        s.timer_fired(1199);
        assert_eq!(s.poll_action(1199), None, "looked before the retry was due");
        s.timer_fired(1200);
        assert!(matches!(
            s.poll_action(1200),
            Some(DrainAction::Scan { .. })
        ));
        // Nothing due later: the idle poll.
        s.scanned(1200, Some(&due(&[], None)));
        assert_eq!(s.poll_timeout(1200), 1700);
        // A failed look retries after the idle poll too.
        s.timer_fired(1700);
        assert!(matches!(
            s.poll_action(1700),
            Some(DrainAction::Scan { .. })
        ));
        s.scanned(1700, None);
        assert_eq!(s.poll_timeout(1700), 2200);
    }

    #[test]
    fn expiry_and_budget_sync_run_on_their_cadence() {
        let mut s = DrainScheduler::new(schedule(), 0);
        started(&mut s, 0, &due(&[], None));
        let mut expires = 0;
        let mut syncs = 0;
        let mut now = 0;
        while now <= 120_000 {
            s.timer_fired(now);
            while let Some(action) = s.poll_action(now) {
                match action {
                    DrainAction::Expire => expires += 1,
                    DrainAction::SyncBudget => syncs += 1,
                    DrainAction::Scan { .. } => {
                        s.scanned(now, Some(&due(&[], None)));
                    }
                }
            }
            now = s.poll_timeout(now).max(now + 1);
        }
        assert_eq!(expires, 24, "every 5 s over 120 s");
        assert_eq!(syncs, 2, "every 60 s after the first");
    }
}
