//! Bounds on what the outbox may hold (audit #13, item 4): entries and
//! distinct destination relays, per account and in total, checked at send
//! time together with routability ([`crate::routes`]).
//!
//! Counted in memory, not in the store: a send checks and reserves its
//! outbox entries under one short lock (no store round trip on the hot
//! path), and every way an entry leaves the outbox — delivered, refused
//! for good, expired — releases it. Totals start from, and are
//! periodically re-read from, the store ([`Relay::outbox_budget_sync`], the
//! drainer calls it), so entries from before a restart or written by
//! another process sharing the database count too. Per-account counts
//! cover what this process accepted since it started (the store keeps no
//! per-sender index; the sender columns are on their way out, item 14).

use std::collections::HashMap;
use std::sync::Mutex;

use courier_protocol::{RelayName, Username};

use crate::error::{RelayError, Result};
use crate::relay::Relay;
use crate::store::{OutboxDestination, OutboxEntry};

/// Limits of the outbox (part of [`crate::Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most outbox entries in total (`outbox_full` beyond).
    pub entries_max: u64,
    /// Most distinct destination relays in the outbox (`outbox_full`).
    pub destinations_max: u64,
    /// Most outbox entries one account may have waiting (`outbox_quota`).
    pub per_account_max: u64,
    /// Most distinct destination relays one account may have mail waiting
    /// for (`outbox_quota`).
    pub destinations_per_account_max: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            entries_max: 1_000_000,
            destinations_max: 10_000,
            per_account_max: 10_000,
            destinations_per_account_max: 256,
        }
    }
}

#[derive(Debug, Default)]
struct Account {
    entries: u64,
    destinations: HashMap<RelayName, u64>,
}

#[derive(Debug, Default)]
struct Counts {
    entries: u64,
    destinations: HashMap<RelayName, u64>,
    accounts: HashMap<Username, Account>,
}

/// The in-memory outbox counts of one relay.
#[derive(Debug, Default)]
pub(crate) struct OutboxBudget {
    counts: Mutex<Counts>,
}

fn dec(map: &mut HashMap<RelayName, u64>, relay: &RelayName) {
    if let Some(n) = map.get_mut(relay) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(relay);
        }
    }
}

impl OutboxBudget {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Plain counters: a panic elsewhere leaves them usable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and takes one entry per relay in `relays` for `user`.
    fn reserve(&self, limits: &OutboxLimits, user: &Username, relays: &[RelayName]) -> Result<()> {
        let mut c = self.lock();
        let n = relays.len() as u64;
        let account = c.accounts.get(user);
        let entries = account.map_or(0, |a| a.entries);
        let new_for_account = relays
            .iter()
            .filter(|r| account.is_none_or(|a| !a.destinations.contains_key(*r)))
            .count() as u64;
        let destinations = account.map_or(0, |a| a.destinations.len() as u64);
        if entries + n > limits.per_account_max
            || destinations + new_for_account > limits.destinations_per_account_max
        {
            return Err(RelayError::OutboxQuota);
        }
        let new_overall = relays
            .iter()
            .filter(|r| !c.destinations.contains_key(*r))
            .count() as u64;
        if c.entries + n > limits.entries_max
            || c.destinations.len() as u64 + new_overall > limits.destinations_max
        {
            return Err(RelayError::OutboxFull);
        }
        c.entries += n;
        for r in relays {
            *c.destinations.entry(r.clone()).or_default() += 1;
        }
        let account = c.accounts.entry(user.clone()).or_default();
        account.entries += n;
        for r in relays {
            *account.destinations.entry(r.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// Gives back one entry for `relay` (and `user`'s share, if known).
    fn release(&self, user: Option<&Username>, relay: &RelayName) {
        let mut c = self.lock();
        c.entries = c.entries.saturating_sub(1);
        dec(&mut c.destinations, relay);
        if let Some(user) = user
            && let Some(a) = c.accounts.get_mut(user)
        {
            a.entries = a.entries.saturating_sub(1);
            dec(&mut a.destinations, relay);
            if a.entries == 0 {
                c.accounts.remove(user);
            }
        }
    }

    /// Takes the totals from the store's view of the outbox.
    fn sync(&self, destinations: &[OutboxDestination]) {
        let mut c = self.lock();
        c.entries = destinations.iter().map(|d| d.pending).sum();
        c.destinations = destinations
            .iter()
            .filter(|d| d.pending > 0)
            .map(|d| (d.relay.clone(), d.pending))
            .collect();
    }

    /// (entries, destinations, accounts) counted now.
    fn census(&self) -> (u64, usize, usize) {
        let c = self.lock();
        (c.entries, c.destinations.len(), c.accounts.len())
    }
}

/// Outbox entries taken for one message until the store has it: dropped
/// without [`Reservation::keep`] (a failed or duplicate accept), they are
/// given back.
#[must_use]
pub(crate) struct Reservation<'r> {
    relay: &'r Relay,
    user: Username,
    relays: Vec<RelayName>,
}

impl Reservation<'_> {
    /// The store holds the entries now: they are released as they leave
    /// the outbox.
    pub(crate) fn keep(mut self) {
        self.relays.clear();
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        for r in &self.relays {
            self.relay.outbox_budget.release(Some(&self.user), r);
        }
    }
}

impl Relay {
    /// Admits a message's outbox entries for `user`, one per relay in
    /// `relays`: every relay must be routable ([`crate::routes::Routes`];
    /// `unknown_relay` names those that are not, nothing is stored) and
    /// the outbox limits must hold (`outbox_quota` for the account's,
    /// `outbox_full` for the relay's).
    pub(crate) fn outbox_reserve(
        &self,
        user: &Username,
        relays: &[RelayName],
    ) -> Result<Reservation<'_>> {
        let unroutable: Vec<RelayName> = relays
            .iter()
            .filter(|r| !self.routes.routable(r))
            .cloned()
            .collect();
        if !unroutable.is_empty() {
            return Err(RelayError::UnknownRelays(unroutable));
        }
        if !relays.is_empty() {
            self.outbox_budget
                .reserve(&self.config.outbox_limits, user, relays)?;
        }
        Ok(Reservation {
            relay: self,
            user: user.clone(),
            relays: relays.to_vec(),
        })
    }

    /// An entry left the outbox (delivered, refused for good, expired).
    pub(crate) fn outbox_release(&self, entry: &OutboxEntry) {
        // The sender is sealed in the store (see `crate::secret`); one
        // small AEAD open per entry that leaves the outbox.
        let user = entry
            .sender
            .as_ref()
            .and_then(|sealed| self.config.store_secret.open_sender(sealed.as_slice()))
            .map(|(user, _)| user);
        self.outbox_budget.release(user.as_ref(), &entry.relay);
    }

    /// Re-reads the outbox totals from the store (one pass over the
    /// outbox): at start, and now and then so entries written by other
    /// processes on the same database count. The drainer calls it.
    pub async fn outbox_budget_sync(&self) -> Result<()> {
        let destinations = self.store.outbox_destinations().await?;
        self.outbox_budget.sync(&destinations);
        Ok(())
    }

    /// (entries, destinations, accounts) the outbox budget counts now; for
    /// tests and metrics.
    pub fn outbox_census(&self) -> (u64, usize, usize) {
        self.outbox_budget.census()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: usize) -> RelayName {
        RelayName::parse(&format!("relay-{n}.example")).unwrap()
    }

    #[test]
    fn limits_hold_per_account_and_in_total_and_releases_free_them() {
        let b = OutboxBudget::default();
        let limits = OutboxLimits {
            entries_max: 10,
            destinations_max: 4,
            per_account_max: 6,
            destinations_per_account_max: 3,
        };
        let alice: Username = "alice".parse().unwrap();
        let bob: Username = "bob".parse().unwrap();
        b.reserve(&limits, &alice, &[name(1), name(2), name(3)])
            .unwrap();
        assert_eq!(
            b.reserve(&limits, &alice, &[name(4)]),
            Err(RelayError::OutboxQuota),
            "a fourth destination for alice"
        );
        b.reserve(&limits, &alice, &[name(1), name(2), name(3)])
            .unwrap();
        assert_eq!(
            b.reserve(&limits, &alice, &[name(1)]),
            Err(RelayError::OutboxQuota),
            "a seventh entry for alice"
        );
        b.reserve(&limits, &bob, &[name(4)]).unwrap();
        assert_eq!(
            b.reserve(&limits, &bob, &[name(5)]),
            Err(RelayError::OutboxFull),
            "a fifth destination overall"
        );
        b.reserve(&limits, &bob, &[name(4), name(1), name(2)])
            .unwrap();
        let carol: Username = "carol".parse().unwrap();
        assert_eq!(
            b.reserve(&limits, &carol, &[name(3)]),
            Err(RelayError::OutboxFull),
            "an eleventh entry overall"
        );
        assert_eq!(b.census(), (10, 4, 2));
        b.release(Some(&alice), &name(1));
        b.reserve(&limits, &alice, &[name(1)]).unwrap();
        for r in [1, 2, 3, 1, 2, 3] {
            b.release(Some(&alice), &name(r));
        }
        assert_eq!(b.census(), (4, 3, 1));
    }
}
