//! The writer: every write of a store goes through one task, which gathers
//! waiting operations into one transaction (group commit), runs each under
//! a savepoint so one failing operation does not undo the others, commits,
//! and only then answers each caller (after the [`Syncer`]'s fsync when
//! SQLite runs with full durability).

use courier_protocol::{DeviceId, Username};
use courier_relay::RelayError;
use courier_relay::store::{AcceptOutcome, NewMessage, OnCommit};
use tokio::sync::{mpsc, oneshot};

use super::dialect::{Conn, PG, Pool};
use super::mailbox::{accept_in, accept_many, ack_many};
use super::query::{BoxFuture, exec};
use crate::error::{Error, Result};
use crate::syncer::{Batch, Syncer};

/// Prepared statements the writer connection keeps: a few templates times
/// the row counts a batch can have (sqlx's default of 100 made the writer
/// re-parse most batched statements).
pub(super) const WRITER_STATEMENTS_CACHED: usize = 2048;

/// Most operations committed in one transaction.
pub(super) const BATCH_MAX: usize = 512;
/// Depth of the queue in front of the writer; callers wait when it is full.
pub(super) const QUEUE_MAX: usize = 4096;

// ---------------------------------------------------------------- writer

pub(super) trait WriteJob: Send {
    /// Runs the operation; true if it succeeded (its writes are kept).
    fn run<'c>(&'c mut self, conn: &'c mut Conn) -> BoxFuture<'c, bool>;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<()>);
    /// The operation's error if it failed because the disk is full.
    fn storage_full(&self) -> Option<RelayError>;
}

/// What a job calls with its committed result before replying.
pub(super) type Then<T> = Box<dyn FnOnce(&T) + Send>;

pub(super) struct Typed<T, F> {
    pub(super) op: Option<F>,
    pub(super) result: Option<Result<T>>,
    pub(super) reply: oneshot::Sender<Result<T>>,
    /// Called with a successful, committed result before the reply.
    pub(super) then: Option<Then<T>>,
}

impl<T, F> WriteJob for Typed<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    fn run<'c>(&'c mut self, conn: &'c mut Conn) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            let Some(op) = self.op.take() else {
                return false;
            };
            let result = op(conn).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn storage_full(&self) -> Option<RelayError> {
        match &self.result {
            Some(Err(Error(e @ RelayError::StorageFull(_)))) => Some(e.clone()),
            _ => None,
        }
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let answer = match (self.result, committed) {
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(RelayError::Store("operation did not run".into()).into()),
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) => Err(e),
        };
        if let (Ok(v), Some(then)) = (&answer, self.then) {
            then(v);
        }
        // The caller may have gone away; the data is committed regardless.
        let _ = self.reply.send(answer);
    }
}

/// A queued write. Accepts are kept apart so a batch of them can be stored
/// with a few multi-row statements instead of several statements each.
pub(super) enum Job {
    Op(Box<dyn WriteJob>),
    Accept(Box<AcceptJob>),
    Ack(Box<AckJob>),
}

/// A queued ack. Acks from every connection in a batch are applied together
/// with four statements, whatever their number.
pub(super) struct AckJob {
    pub(super) user: Username,
    pub(super) device: DeviceId,
    pub(super) seqs: Vec<u64>,
    pub(super) reply: oneshot::Sender<Result<u32>>,
}

pub(super) fn job<T, F>(op: F, reply: oneshot::Sender<Result<T>>) -> Box<dyn WriteJob>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    job_then(op, reply, None)
}

/// A job that calls `then` with its committed result before replying.
pub(super) fn job_then<T, F>(
    op: F,
    reply: oneshot::Sender<Result<T>>,
    then: Option<Then<T>>,
) -> Box<dyn WriteJob>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    Box::new(Typed {
        op: Some(op),
        result: None,
        reply,
        then,
    })
}

pub(super) fn accept_job(
    m: NewMessage,
    reply: oneshot::Sender<Result<AcceptOutcome>>,
    then: Option<OnCommit>,
) -> Box<dyn WriteJob> {
    let then = then.map(|f| f as Then<AcceptOutcome>);
    job_then(move |c| Box::pin(accept_in(c, m)), reply, then)
}

/// A queued accept: the message, its caller, and what to call once it is
/// committed ([`Store::accept_then`]).
pub(super) type AcceptJob = (
    NewMessage,
    oneshot::Sender<Result<AcceptOutcome>>,
    Option<OnCommit>,
);
pub(super) type Accepts = Vec<AcceptJob>;
pub(super) type Acks = Vec<AckJob>;

/// What a batch's fast paths produced, answered after COMMIT.
#[derive(Default)]
pub(super) struct Fast {
    /// Outcomes of the batched accepts, if that path ran.
    pub(super) accepts: Option<Vec<AcceptOutcome>>,
    /// Entries deleted per ack job, if acks ran.
    pub(super) acks: Option<Vec<u32>>,
}

/// Runs one batch in one transaction. Accepts first, together (fast path);
/// if any of them needs individual treatment (duplicate id, unknown device,
/// full mailbox) the fast path is rolled back and they join `ops`, each
/// under its own savepoint. Returns the fast path's outcomes, if it ran.
pub(super) async fn run_batch(
    conn: &mut Conn,
    ops: &mut Vec<Box<dyn WriteJob>>,
    accepts: &mut Accepts,
    acks: &Acks,
) -> Result<Fast> {
    exec(conn, if PG { "BEGIN" } else { "BEGIN IMMEDIATE" }).await?;
    match run_in_transaction(conn, ops, accepts, acks).await {
        Ok(fast) => match exec(conn, "COMMIT").await {
            Ok(()) => Ok(fast),
            Err(e) => {
                let _ = exec(conn, "ROLLBACK").await;
                Err(e)
            }
        },
        Err(e) => {
            let _ = exec(conn, "ROLLBACK").await;
            Err(e)
        }
    }
}

pub(super) async fn run_in_transaction(
    conn: &mut Conn,
    ops: &mut Vec<Box<dyn WriteJob>>,
    accepts: &mut Accepts,
    acks: &Acks,
) -> Result<Fast> {
    let mut fast = Fast::default();
    if !accepts.is_empty() {
        // First, so its savepoint has no earlier changes to journal.
        exec(conn, "SAVEPOINT accepts").await?;
        match accept_many(conn, accepts).await {
            Ok(Some(outcomes)) => {
                if PG {
                    exec(conn, "RELEASE SAVEPOINT accepts").await?;
                }
                fast.accepts = Some(outcomes);
            }
            // A full disk fails every write of the batch alike (and SQLite
            // may have rolled the whole transaction back already): fail the
            // batch with it rather than retry each accept.
            Err(e @ Error(RelayError::StorageFull(_))) => return Err(e),
            Ok(None) | Err(_) => {
                exec(conn, "ROLLBACK TO SAVEPOINT accepts").await?;
                exec(conn, "RELEASE SAVEPOINT accepts").await?;
                for (m, reply, then) in accepts.drain(..) {
                    ops.push(accept_job(m, reply, then));
                }
            }
        }
    }
    if !acks.is_empty() {
        // No savepoint: acks cannot fail but for a database error, which
        // fails the whole batch anyway (and every caller retries).
        fast.acks = Some(ack_many(conn, acks).await?);
    }
    // A lone operation needs no savepoint: if it fails the whole
    // transaction is rolled back (it is alone in it).
    let single = ops.len() == 1 && fast.accepts.is_none() && fast.acks.is_none();
    for op in ops.iter_mut() {
        if !single {
            exec(conn, "SAVEPOINT op").await?;
        }
        let ok = op.run(conn).await;
        if !ok && let Some(full) = op.storage_full() {
            return Err(full.into());
        }
        if single {
            if !ok {
                exec(conn, "ROLLBACK").await?;
                // Nothing else is in this transaction; start an empty one
                // so the caller's COMMIT has something to end.
                exec(conn, if PG { "BEGIN" } else { "BEGIN IMMEDIATE" }).await?;
            }
        } else if ok {
            // SQLite: COMMIT releases every savepoint at once; PostgreSQL
            // keeps a subtransaction per open savepoint, so release each.
            if PG {
                exec(conn, "RELEASE SAVEPOINT op").await?;
            }
        } else {
            exec(conn, "ROLLBACK TO SAVEPOINT op").await?;
            exec(conn, "RELEASE SAVEPOINT op").await?;
        }
    }
    Ok(fast)
}

/// Takes what is queued; then, while that keeps growing, lets the callers'
/// tasks run (a few yields, microseconds) so callers woken by the previous
/// commit get into this batch instead of paying for a commit of their own.
pub(super) async fn gather(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, batch_max: usize) {
    const YIELDS_MAX: usize = 4;
    let mut yields = 0;
    loop {
        let before = jobs.len();
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if batch_max == 1 || jobs.len() >= batch_max || yields >= YIELDS_MAX {
            return;
        }
        if yields > 0 && jobs.len() == before {
            return;
        }
        yields += 1;
        tokio::task::yield_now().await;
    }
}

pub(super) async fn run_writer(
    pool: Pool,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    syncer: Option<Syncer<Committed>>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(batch_max);
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        gather(&mut rx, &mut jobs, batch_max).await;
        let mut ops: Vec<Box<dyn WriteJob>> = Vec::with_capacity(jobs.len());
        let mut accepts: Accepts = Vec::new();
        let mut acks: Acks = Vec::new();
        for j in jobs.drain(..) {
            match j {
                Job::Op(op) => ops.push(op),
                Job::Accept(accept) => accepts.push(*accept),
                Job::Ack(ack) => acks.push(*ack),
            }
        }
        if accepts.len() == 1
            && let Some((m, reply, then)) = accepts.pop()
        {
            ops.push(accept_job(m, reply, then));
        }
        let committed = match syncer.as_ref().and_then(Syncer::failure) {
            Some(failure) => Err(failure.into()),
            None => match pool.acquire().await {
                Ok(mut conn) => {
                    let r = run_batch(&mut conn, &mut ops, &mut accepts, &acks).await;
                    if r.is_err() {
                        // The connection may be broken; let the pool replace it.
                        conn.close_on_drop();
                    }
                    r
                }
                Err(e) => Err(e.into()),
            },
        };
        let (fast, status) = match committed {
            Ok(fast) => (fast, Ok(())),
            Err(e) => (Fast::default(), Err(e)),
        };
        let batch = Committed {
            ops,
            accepts,
            acks,
            fast,
        };
        match (&syncer, status) {
            // Answered once the commit is on disk; meanwhile the next
            // batch runs.
            (Some(syncer), Ok(())) => syncer.after_sync(batch),
            (_, status) => batch.answer(status),
        }
    }
}

/// A batch the writer has finished, waiting to be answered.
pub(super) struct Committed {
    pub(super) ops: Vec<Box<dyn WriteJob>>,
    pub(super) accepts: Accepts,
    pub(super) acks: Acks,
    pub(super) fast: Fast,
}

impl Batch for Committed {
    /// Answers every caller: `status` is the fate of the transaction (and,
    /// with a [`Syncer`], of the sync that made it durable).
    fn answer(self, status: Result<()>) {
        let Committed {
            ops,
            accepts,
            acks,
            fast,
        } = self;
        let lost = || {
            status
                .clone()
                .err()
                .unwrap_or_else(|| RelayError::Store("batch lost".into()).into())
        };
        let fast_ok = status.is_ok();
        // In commit order: the batched accepts claimed their seqs first.
        match fast.accepts.filter(|_| fast_ok) {
            Some(outcomes) => {
                for ((_, reply, then), outcome) in accepts.into_iter().zip(outcomes) {
                    if let Some(then) = then {
                        then(&outcome);
                    }
                    let _ = reply.send(Ok(outcome));
                }
            }
            None => {
                for (_, reply, _) in accepts {
                    let _ = reply.send(Err(lost()));
                }
            }
        }
        match fast.acks.filter(|_| fast_ok) {
            Some(counts) => {
                for (ack, count) in acks.into_iter().zip(counts) {
                    let _ = ack.reply.send(Ok(count));
                }
            }
            None => {
                for ack in acks {
                    let _ = ack.reply.send(Err(lost()));
                }
            }
        }
        for op in ops {
            op.finish(status.clone());
        }
    }
}

/// The state both SQL stores share.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(super) read: Pool,
    pub(super) write: Pool,
    pub(super) writer: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl SqlStore {
    /// Starts the writer. `wal_sync` (SQLite only): the database file whose
    /// WAL a [`Syncer`] makes durable before answering; the writer
    /// connection must then run `synchronous = NORMAL`.
    pub(super) fn start(
        read: Pool,
        write: Pool,
        group_commit: bool,
        wal_sync: Option<std::path::PathBuf>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let batch_max = if group_commit { BATCH_MAX } else { 1 };
        let syncer = match wal_sync {
            Some(database) => Some(
                Syncer::start(database)
                    .map_err(|e| RelayError::Store(format!("cannot start the sync thread: {e}")))?,
            ),
            None => None,
        };
        let writer = run_writer(write.clone(), rx, batch_max, syncer);
        if PG {
            tokio::spawn(writer);
        } else {
            // SQLite: the writer gets a thread and a runtime of its own. Each
            // statement is a hop to sqlx's connection thread and back; on the
            // shared runtime every hop back waited behind all the
            // connections' tasks, and the batch (so every sender) with it.
            // (PostgreSQL's socket belongs to the shared runtime's driver.)
            // If the thread or its runtime cannot start, the writer is
            // dropped and every write fails with "writer stopped".
            let _ = std::thread::Builder::new()
                .name("courier-sqlite-writer".into())
                .spawn(move || {
                    if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                    {
                        runtime.block_on(writer);
                    }
                });
        }
        Ok(SqlStore {
            read,
            write,
            writer: tx,
        })
    }

    pub(super) async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job::Op(job(op, reply)))
            .await
            .map_err(|_| RelayError::Store("writer stopped".into()))?;
        answer
            .await
            .map_err(|_| RelayError::Store("writer stopped".into()))?
    }

    pub(super) async fn queue_accept(
        &self,
        message: NewMessage,
        then: Option<OnCommit>,
    ) -> Result<AcceptOutcome> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job::Accept(Box::new((message, reply, then))))
            .await
            .map_err(|_| RelayError::Store("writer stopped".into()))?;
        answer
            .await
            .map_err(|_| RelayError::Store("writer stopped".into()))?
    }

    /// Closes the connections. Writes already answered are committed;
    /// writes still queued fail with a store error.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}
