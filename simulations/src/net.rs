//! The simulated network: link latency with jitter, loss, duplication,
//! reordering, and partitions between relay sets.
//!
//! Like TigerBeetle's packet simulator, the network decides for each message
//! independently — from the seeded stream — whether and when it arrives.
//! Messages are not queued per link, so a reordered (held back) message lets
//! later ones overtake it.

use crate::rng::SimRng;
use crate::scenario::{Jitter, Link};

/// The fate of one message on a link: the delays after which copies arrive
/// (none when lost, two when duplicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fate {
    /// Delays of the arriving copies, in milliseconds; `None` slots unused.
    pub arrivals_ms: [Option<u64>; 2],
}

impl Fate {
    /// Iterates the delays of the copies that arrive.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.arrivals_ms.iter().flatten().copied()
    }

    /// True when no copy arrives.
    pub fn is_lost(&self) -> bool {
        self.arrivals_ms[0].is_none()
    }
}

/// Counters of what the network did, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Messages offered to a link.
    pub sent: u64,
    /// Messages lost by the loss rate.
    pub lost: u64,
    /// Messages dropped because a partition separated the ends.
    pub partitioned: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages held back so later ones could overtake.
    pub reordered: u64,
}

/// One draw of a link's latency: fixed part plus jitter.
pub fn latency_ms(link: &Link, rng: &mut SimRng) -> u64 {
    let jitter = match &link.jitter {
        Jitter::None => 0,
        Jitter::Uniform { max_ms } => rng.range_inclusive(0, *max_ms),
        Jitter::Normal { stddev_ms, max_ms } => {
            ((rng.normal() * stddev_ms).abs().round() as u64).min(*max_ms)
        }
        Jitter::Exponential { mean_ms, max_ms } => {
            (rng.exponential(*mean_ms).round() as u64).min(*max_ms)
        }
    };
    link.latency_ms + jitter
}

/// Decides the fate of one message on `link`.
pub fn transmit(link: &Link, rng: &mut SimRng, stats: &mut NetStats) -> Fate {
    stats.sent += 1;
    if rng.chance(link.loss) {
        stats.lost += 1;
        return Fate::default();
    }
    let mut first = latency_ms(link, rng);
    if rng.chance(link.reorder) {
        stats.reordered += 1;
        first += rng.range_inclusive(1, link.reorder_delay_ms_max.max(1));
    }
    let second = if rng.chance(link.duplicate) {
        stats.duplicated += 1;
        Some(latency_ms(link, rng))
    } else {
        None
    };
    Fate {
        arrivals_ms: [Some(first), second],
    }
}

/// Which relays can reach which: every relay carries a partition set id;
/// relays with different ids cannot exchange messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    set_of: Vec<u32>,
}

impl Partitions {
    /// All `n` relays connected.
    pub fn connected(n: usize) -> Self {
        Partitions { set_of: vec![0; n] }
    }

    /// Splits into the given sets; relays not named share one more set.
    pub fn split(&mut self, sets: &[Vec<u32>]) {
        let rest = sets.len() as u32;
        self.set_of.iter_mut().for_each(|s| *s = rest);
        for (i, set) in sets.iter().enumerate() {
            for &r in set {
                if let Some(s) = self.set_of.get_mut(r as usize) {
                    *s = i as u32;
                }
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.set_of.iter_mut().for_each(|s| *s = 0);
    }

    /// True when `a` and `b` can exchange messages.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        self.set_of.get(a) == self.set_of.get(b)
    }

    /// True when any partition is in force.
    pub fn is_split(&self) -> bool {
        self.set_of.windows(2).any(|w| w[0] != w[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_separates_sets_and_heal_joins_them() {
        let mut p = Partitions::connected(5);
        p.split(&[vec![0, 1], vec![2]]);
        assert!(p.reachable(0, 1));
        assert!(!p.reachable(1, 2));
        assert!(p.reachable(3, 4));
        assert!(!p.reachable(0, 3));
        assert!(p.is_split());
        p.heal();
        assert!(p.reachable(0, 4) && !p.is_split());
    }

    #[test]
    fn lossless_link_delivers_once_with_latency() {
        let link = Link {
            latency_ms: 20,
            ..Link::default()
        };
        let mut rng = SimRng::new(3);
        let mut stats = NetStats::default();
        for _ in 0..100 {
            let f = transmit(&link, &mut rng, &mut stats);
            assert_eq!(f.iter().collect::<Vec<_>>(), [20]);
        }
        assert_eq!(stats.sent, 100);
    }

    #[test]
    fn fault_rates_show_up_in_the_counters() {
        let link = Link {
            loss: 0.2,
            duplicate: 0.2,
            reorder: 0.2,
            jitter: Jitter::Exponential {
                mean_ms: 5.0,
                max_ms: 50,
            },
            ..Link::default()
        };
        let mut rng = SimRng::new(4);
        let mut stats = NetStats::default();
        for _ in 0..10_000 {
            transmit(&link, &mut rng, &mut stats);
        }
        for count in [stats.lost, stats.duplicated, stats.reordered] {
            assert!((1_000..3_000).contains(&count), "{stats:?}");
        }
    }
}
