//! The store's figures for `/metrics` and `/readyz`, read at most once per
//! interval however many requests ask.
//!
//! Both endpoints are unauthenticated, and `Store::stats` counts whole
//! tables: without this, anyone could keep the database busy with scans by
//! requesting `/metrics` in a loop.

use std::future::Future;
use std::time::{Duration, Instant};

use courier_relay::store::StoreStats;
use tokio::sync::Mutex;

/// The last figures and when they were read. Callers that find them stale
/// take turns on one lock: the first reads the store, the ones queued
/// behind it find the fresh figures and return them (concurrent requests
/// coalesce into one read).
#[derive(Debug)]
pub struct StatsCache {
    interval: Duration,
    last: Mutex<Option<(Instant, Result<StoreStats, String>)>>,
}

impl StatsCache {
    /// A cache whose figures are at most `interval` old.
    pub fn new(interval: Duration) -> Self {
        StatsCache {
            interval,
            last: Mutex::new(None),
        }
    }

    /// The figures, from `read` if the last ones are older than the
    /// interval (a failed read is kept as long as a good one: a store in
    /// trouble is not hammered either). The error is for logs.
    pub async fn get<F, Fut>(&self, read: F) -> Result<StoreStats, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<StoreStats, courier_relay::RelayError>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, figures)) = &*last
            && at.elapsed() < self.interval
        {
            return figures.clone();
        }
        let figures = read().await.map_err(|e| e.to_string());
        ::metrics::counter!(crate::metrics::STORE_STATS_READS).increment(1);
        *last = Some((Instant::now(), figures.clone()));
        figures
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_read_per_interval() {
        let cache = Arc::new(StatsCache::new(Duration::from_secs(3600)));
        let reads = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let cache = cache.clone();
                let reads = reads.clone();
                tokio::spawn(async move {
                    cache
                        .get(|| async {
                            reads.fetch_add(1, Ordering::SeqCst);
                            // A slow scan: everyone else arrives meanwhile.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(StoreStats {
                                accounts: 7,
                                ..StoreStats::default()
                            })
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().accounts, 7);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);

        // Once the interval is over, the next request reads again.
        let cache = StatsCache::new(Duration::ZERO);
        for _ in 0..3 {
            cache
                .get(|| async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    Ok(StoreStats::default())
                })
                .await
                .unwrap();
        }
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }
}
