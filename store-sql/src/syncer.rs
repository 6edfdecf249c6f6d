//! The SQLite store's sync thread: commits become durable off the
//! writer's path. Dialect-free (it only fsyncs a file and answers batches),
//! so it is compiled once, not once per dialect like `sql/`.

use std::sync::OnceLock;

use courier_relay::RelayError;

use crate::error::Result;

/// A committed batch of writes whose callers wait for its fate.
pub(crate) trait Batch: Send + 'static {
    /// Answers every caller: `status` is the fate of the transaction and of
    /// the sync that made it durable.
    fn answer(self, status: Result<()>);
}

/// Makes SQLite commits durable off the writer's path (SQLite only, with
/// full durability). The writer connection runs `synchronous = NORMAL`:
/// COMMIT appends the transaction to the WAL without an fsync, and the
/// writer goes on with the next batch while this thread fsyncs the WAL and
/// only then answers the committed batch's callers. One fsync covers every
/// batch committed before it, and the writer never waits for the disk.
///
/// Why this is as durable as `synchronous = FULL` for every answered
/// write: FULL's only extra step in WAL mode is that same fsync of the WAL
/// at each commit; NORMAL still syncs the WAL header when the WAL restarts
/// and both files around every checkpoint, so a power loss leaves the
/// database consistent and holding every transaction up to the last
/// completed fsync. A transaction is answered only after an fsync that
/// began after its COMMIT. The WAL is opened afresh for each fsync: SQLite
/// deletes it only after checkpointing it into the synced database file,
/// so a missing file means there is nothing left to sync. What is visible
/// early: another connection may read a transaction before its fsync (a
/// fetch could return an envelope whose sender has not been answered yet);
/// if the machine then loses power, the sender retries with the same
/// envelope id and the recipient, who deduplicates by id, sees it once.
///
/// A failed fsync fails the batches it covered and every write after it,
/// until the relay restarts (as PostgreSQL does): after a failed fsync the
/// kernel may have dropped the unwritten pages, and a later fsync that
/// succeeds proves nothing about them.
pub(crate) struct Syncer<B> {
    batches: std::sync::mpsc::Sender<B>,
    /// Why the first failed fsync failed, once one has.
    failed: std::sync::Arc<OnceLock<String>>,
}

impl<B: Batch> Syncer<B> {
    /// Starts the sync thread for the WAL of the database at `database`.
    pub(crate) fn start(database: std::path::PathBuf) -> std::io::Result<Self> {
        let mut wal = database.into_os_string();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        let (tx, rx) = std::sync::mpsc::channel::<B>();
        let failed = std::sync::Arc::new(OnceLock::<String>::new());
        let seen = failed.clone();
        std::thread::Builder::new()
            .name("courier-sqlite-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    batches.extend(rx.try_iter());
                    let synced = match seen.get() {
                        Some(why) => Err(sync_failure(why).into()),
                        None => sync_file(&wal).map_err(|e| {
                            let why = format!("{}: {e}", wal.display());
                            sync_failure(seen.get_or_init(|| why)).into()
                        }),
                    };
                    for batch in batches {
                        batch.answer(synced.clone());
                    }
                }
            })?;
        Ok(Syncer {
            batches: tx,
            failed,
        })
    }

    /// Queues a committed batch; it is answered after the next fsync (or
    /// failed now if the sync thread is gone).
    pub(crate) fn after_sync(&self, batch: B) {
        if let Err(std::sync::mpsc::SendError(batch)) = self.batches.send(batch) {
            batch.answer(Err(RelayError::Store("sync thread stopped".into()).into()));
        }
    }

    /// The error every write gets once an fsync has failed.
    pub(crate) fn failure(&self) -> Option<RelayError> {
        self.failed.get().map(|why| sync_failure(why))
    }
}

fn sync_failure(why: &str) -> RelayError {
    RelayError::Store(format!(
        "fsync of the SQLite WAL failed ({why}); writes fail until the relay restarts"
    ))
}

/// fsyncs the file at `path`; a missing file has nothing to sync.
fn sync_file(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(file) => file.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch that reports the status it was answered with.
    struct Reported(std::sync::mpsc::Sender<Result<()>>);

    impl Batch for Reported {
        fn answer(self, status: Result<()>) {
            let _ = self.0.send(status);
        }
    }

    /// Hands the syncer one batch and waits for its answer.
    fn answered_by(syncer: &Syncer<Reported>) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        syncer.after_sync(Reported(tx));
        rx.recv().expect("answered")
    }

    #[test]
    fn batches_are_answered_after_the_wal_is_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = dir.path().join("relay.db");
        std::fs::write(dir.path().join("relay.db-wal"), b"frames").expect("wal");
        let syncer = Syncer::start(database).expect("sync thread");
        answered_by(&syncer).expect("synced");
        // No WAL at all (checkpointed and removed): nothing to sync.
        std::fs::remove_file(dir.path().join("relay.db-wal")).expect("rm");
        answered_by(&syncer).expect("nothing to sync");
        assert!(syncer.failure().is_none());
    }

    #[test]
    fn a_failed_fsync_fails_its_batch_and_every_write_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A WAL path under a regular file cannot be opened (ENOTDIR).
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"").expect("file");
        let syncer = Syncer::start(file.join("relay.db")).expect("sync thread");
        let answer = answered_by(&syncer);
        assert!(
            matches!(&answer, Err(crate::error::Error(RelayError::Store(m))) if m.contains("fsync of the SQLite WAL failed")),
            "{answer:?}"
        );
        // Poisoned: the writer refuses every later batch up front.
        let failure = syncer.failure().expect("remembered");
        assert!(
            failure.to_string().contains("until the relay restarts"),
            "{failure}"
        );
        assert!(answered_by(&syncer).is_err());
    }
}
