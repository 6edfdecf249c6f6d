//! The one source of randomness in a run: ChaCha8 seeded from the run seed.
//!
//! Every random choice — workload, network, relay retry jitter, key
//! generation — draws from a [`SimRng`] forked from the run seed with a
//! fixed label, so adding draws to one stream never shifts another. ChaCha8
//! is a fixed algorithm, so a seed means the same run on every platform and
//! every version of the `rand` crates (unlike `StdRng`, whose algorithm may
//! change between releases).

use rand::rngs::ChaCha8Rng;
use rand_core::{Infallible, SeedableRng, TryCryptoRng, TryRng};

/// A deterministic, seedable random number generator.
#[derive(Debug)]
pub struct SimRng {
    inner: ChaCha8Rng,
}

impl SimRng {
    /// The generator for a run seed.
    pub fn new(seed: u64) -> Self {
        SimRng {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent stream derived from `seed` and a label (FNV-1a mixed),
    /// so each subsystem has its own stream.
    pub fn fork(seed: u64, label: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in label.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&h.to_le_bytes());
        key[16..24].copy_from_slice(&label.len().to_le_bytes());
        SimRng {
            inner: ChaCha8Rng::from_seed(key),
        }
    }

    /// A uniformly random `u64`.
    pub fn u64(&mut self) -> u64 {
        match self.inner.try_next_u64() {
            Ok(x) => x,
        }
    }

    /// A uniform value in `0..n`; `0` when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the tiny bias (< n / 2^64) is irrelevant
        // for simulation choices and keeps one draw per call.
        ((u128::from(self.u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform index into a slice of length `n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// A uniform value in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`. Draws nothing when `p` is 0, so a
    /// scenario without faults of a kind consumes no randomness for it.
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        self.unit() < p
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// An exponential sample with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }

    /// Random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        match self.inner.try_fill_bytes(out) {
            Ok(()) => {}
        }
    }

    /// Shuffles a slice in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

impl TryRng for SimRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.inner.try_next_u32()
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.inner.try_next_u64()
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.inner.try_fill_bytes(dst)
    }
}

// Key generation in the simulated clients needs a CryptoRng. ChaCha8 is a
// CSPRNG; the point here is reproducibility, not secrecy of simulated keys.
impl TryCryptoRng for SimRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_forks_differ() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        assert_eq!(a.u64(), b.u64());
        let mut x = SimRng::fork(7, "net");
        let mut y = SimRng::fork(7, "workload");
        assert_ne!(x.u64(), y.u64());
        let mut x2 = SimRng::fork(7, "net");
        let mut x3 = SimRng::fork(7, "net");
        assert_eq!(x2.u64(), x3.u64());
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SimRng::new(1);
        for n in [1u64, 2, 3, 10, 1000] {
            for _ in 0..200 {
                assert!(r.below(n) < n);
            }
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range_inclusive(5, 5), 5);
    }
}
