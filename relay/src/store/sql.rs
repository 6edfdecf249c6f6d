// Shared by the SQLite and PostgreSQL stores: `include!`d by `sqlite.rs` and
// `postgres.rs` inside a module that defines `Db`, `Conn`, `Pool`, `Row` and
// `PG` (true for PostgreSQL). Queries are written with `?` placeholders and
// rewritten to `$1…` for PostgreSQL once per query text.
//
// Every write goes through one writer task per store (see `run_writer`):
// it gathers waiting operations into one transaction (group commit), runs
// each under a savepoint so one failing operation does not undo the others,
// commits, and only then answers each caller.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use courier_protocol::{Bytes, DeviceId, EnvelopeId, RelayName, Username};
use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot};

use crate::error::{RelayError, Result};
use crate::store::OutboxDue;
use crate::store::{
    AcceptOutcome, AccessRecord, ChallengeRecord, DeviceRecord, InviteRecord, LinkRecord,
    MailboxRef, NewAccount, NewMessage, OnCommit, NewSession, OutboxDestination, OutboxEntry, OutboxId,
    PurgeReport, RotateOutcome, Store, StoreStats, TokenHash, TokenHashes,
};
use crate::types::{
    DeviceKeys, Envelope, FedRecipient, OneTimePreKey, SignedDeviceList, SignedPreKey,
    kind_code, kind_from_code,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Prepared statements the writer connection keeps: a few templates times
/// the row counts a batch can have (sqlx's default of 100 made the writer
/// re-parse most batched statements).
pub(super) const WRITER_STATEMENTS_CACHED: usize = 2048;

/// Most operations committed in one transaction.
const BATCH_MAX: usize = 512;
/// Depth of the queue in front of the writer; callers wait when it is full.
const QUEUE_MAX: usize = 4096;

// ---------------------------------------------------------------- queries

fn dialect(sql: &'static str) -> &'static str {
    if !PG {
        return sql;
    }
    static CACHE: OnceLock<Mutex<HashMap<usize, &'static str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(sql.as_ptr() as usize).or_insert_with(|| {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        // Bounded: one entry per distinct query text in this file.
        Box::leak(out.into_boxed_str())
    })
}

fn q(sql: &'static str) -> sqlx::query::Query<'static, Db, <Db as sqlx::Database>::Arguments> {
    sqlx::query(dialect(sql))
}

fn i(v: u64) -> i64 {
    // Values above i64::MAX (e.g. u64::MAX "never") are clamped.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn corrupt(what: &str) -> RelayError {
    RelayError::Store(format!("corrupt row: {what}"))
}

fn username(text: String) -> Result<Username> {
    Username::parse(&text).map_err(|_| corrupt("username"))
}

fn relay_name(text: String) -> Result<RelayName> {
    RelayName::parse(&text).map_err(|_| corrupt("relay name"))
}

fn envelope_id(bytes: Vec<u8>) -> Result<EnvelopeId> {
    let b: [u8; 16] = bytes.try_into().map_err(|_| corrupt("envelope id"))?;
    Ok(EnvelopeId(b))
}

fn device_id(v: i64) -> Result<DeviceId> {
    u32::try_from(v).map(DeviceId).map_err(|_| corrupt("device id"))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| RelayError::Store(format!("encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(|_| corrupt("encoded value"))
}

// ---------------------------------------------------------------- writer

trait WriteJob: Send {
    /// Runs the operation; true if it succeeded (its writes are kept).
    fn run<'c>(&'c mut self, conn: &'c mut Conn) -> BoxFuture<'c, bool>;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<()>);
    /// The operation's error if it failed because the disk is full.
    fn storage_full(&self) -> Option<RelayError>;
}

/// What a job calls with its committed result before replying.
type Then<T> = Box<dyn FnOnce(&T) + Send>;

struct Typed<T, F> {
    op: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    /// Called with a successful, committed result before the reply.
    then: Option<Then<T>>,
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
            Some(Err(e @ RelayError::StorageFull(_))) => Some(e.clone()),
            _ => None,
        }
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let answer = match (self.result, committed) {
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(RelayError::Store("operation did not run".into())),
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
enum Job {
    Op(Box<dyn WriteJob>),
    Accept(Box<AcceptJob>),
    Ack(Box<AckJob>),
}

/// A queued ack. Acks from every connection in a batch are applied together
/// with four statements, whatever their number.
struct AckJob {
    user: Username,
    device: DeviceId,
    seqs: Vec<u64>,
    reply: oneshot::Sender<Result<u32>>,
}

fn job<T, F>(op: F, reply: oneshot::Sender<Result<T>>) -> Box<dyn WriteJob>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    job_then(op, reply, None)
}

/// A job that calls `then` with its committed result before replying.
fn job_then<T, F>(
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

fn accept_job(
    m: NewMessage,
    reply: oneshot::Sender<Result<AcceptOutcome>>,
    then: Option<OnCommit>,
) -> Box<dyn WriteJob> {
    let then = then.map(|f| f as Then<AcceptOutcome>);
    job_then(move |c| Box::pin(accept_in(c, m)), reply, then)
}

/// A queued accept: the message, its caller, and what to call once it is
/// committed ([`Store::accept_then`]).
type AcceptJob = (NewMessage, oneshot::Sender<Result<AcceptOutcome>>, Option<OnCommit>);
type Accepts = Vec<AcceptJob>;
type Acks = Vec<AckJob>;

/// What a batch's fast paths produced, answered after COMMIT.
#[derive(Default)]
struct Fast {
    /// Outcomes of the batched accepts, if that path ran.
    accepts: Option<Vec<AcceptOutcome>>,
    /// Entries deleted per ack job, if acks ran.
    acks: Option<Vec<u32>>,
}

async fn exec(conn: &mut Conn, sql: &'static str) -> Result<()> {
    sqlx::raw_sql(sql).execute(&mut *conn).await?;
    Ok(())
}

/// Runs one batch in one transaction. Accepts first, together (fast path);
/// if any of them needs individual treatment (duplicate id, unknown device,
/// full mailbox) the fast path is rolled back and they join `ops`, each
/// under its own savepoint. Returns the fast path's outcomes, if it ran.
async fn run_batch(
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

async fn run_in_transaction(
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
            Err(e @ RelayError::StorageFull(_)) => return Err(e),
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
            return Err(full);
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
async fn gather(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, batch_max: usize) {
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

async fn run_writer(
    pool: Pool,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    syncer: Option<Syncer>,
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
            Some(failure) => Err(failure),
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
struct Committed {
    ops: Vec<Box<dyn WriteJob>>,
    accepts: Accepts,
    acks: Acks,
    fast: Fast,
}

impl Committed {
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
                .unwrap_or_else(|| RelayError::Store("batch lost".into()))
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
#[derive(Clone)]
struct Syncer {
    batches: std::sync::mpsc::Sender<Committed>,
    /// Why the first failed fsync failed, once one has.
    failed: std::sync::Arc<OnceLock<String>>,
}

impl Syncer {
    /// Starts the sync thread for the WAL of the database at `database`.
    fn start(database: std::path::PathBuf) -> std::io::Result<Self> {
        let mut wal = database.into_os_string();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        let (tx, rx) = std::sync::mpsc::channel::<Committed>();
        let failed = std::sync::Arc::new(OnceLock::<String>::new());
        let seen = failed.clone();
        std::thread::Builder::new()
            .name("courier-sqlite-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    batches.extend(rx.try_iter());
                    let synced = match seen.get() {
                        Some(why) => Err(sync_failure(why)),
                        None => sync_file(&wal).map_err(|e| {
                            let why = format!("{}: {e}", wal.display());
                            sync_failure(seen.get_or_init(|| why))
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
    fn after_sync(&self, batch: Committed) {
        if let Err(std::sync::mpsc::SendError(batch)) = self.batches.send(batch) {
            batch.answer(Err(RelayError::Store("sync thread stopped".into())));
        }
    }

    /// The error every write gets once an fsync has failed.
    fn failure(&self) -> Option<RelayError> {
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

/// The state both SQL stores share.
#[derive(Debug, Clone)]
pub struct SqlStore {
    read: Pool,
    write: Pool,
    writer: mpsc::Sender<Job>,
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

    async fn write<T, F>(&self, op: F) -> Result<T>
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

    async fn queue_accept(&self, message: NewMessage, then: Option<OnCommit>) -> Result<AcceptOutcome> {
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

// ---------------------------------------------------------------- operations

async fn device_pk(c: &mut Conn, user: &Username, device: DeviceId) -> Result<Option<i64>> {
    let row = q("SELECT pk FROM devices WHERE username = ? AND device = ?")
        .bind(user.as_str())
        .bind(i64::from(device.0))
        .fetch_optional(&mut *c)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get::<i64, _>(0)?),
        None => None,
    })
}

const DEVICE_COLUMNS: &str = "username, device, identity_key, dh_key, dh_key_signature, spk_id, spk_public, spk_signature, spk_created_ms, otk_count, created_ms";

fn device_row(r: &Row) -> Result<DeviceRecord> {
    let spk_id: Option<i64> = r.try_get(5)?;
    let signed_prekey = match spk_id {
        Some(id) => Some(SignedPreKey {
            id: u32::try_from(id).map_err(|_| corrupt("prekey id"))?,
            public: Bytes(r.try_get::<Option<Vec<u8>>, _>(6)?.unwrap_or_default()),
            signature: Bytes(r.try_get::<Option<Vec<u8>>, _>(7)?.unwrap_or_default()),
            created_ms: u(r.try_get::<Option<i64>, _>(8)?.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(DeviceRecord {
        user: username(r.try_get(0)?)?,
        device: device_id(r.try_get(1)?)?,
        keys: DeviceKeys {
            identity_key: Bytes(r.try_get(2)?),
            dh_key: Bytes(r.try_get(3)?),
            dh_key_signature: Bytes(r.try_get(4)?),
        },
        signed_prekey,
        one_time_count: u32::try_from(r.try_get::<i64, _>(9)?).unwrap_or(0),
        created_ms: u(r.try_get(10)?),
    })
}

async fn insert_device(c: &mut Conn, d: &DeviceRecord) -> Result<()> {
    q("INSERT INTO devices (username, device, identity_key, dh_key, dh_key_signature, otk_count, next_seq, depth, created_ms) VALUES (?, ?, ?, ?, ?, 0, 1, 0, ?)")
        .bind(d.user.as_str())
        .bind(i64::from(d.device.0))
        .bind(d.keys.identity_key.as_slice())
        .bind(d.keys.dh_key.as_slice())
        .bind(d.keys.dh_key_signature.as_slice())
        .bind(i(d.created_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn revoke(c: &mut Conn, session: &str) -> Result<()> {
    q("DELETE FROM access_tokens WHERE session_id = ?")
        .bind(session)
        .execute(&mut *c)
        .await?;
    q("DELETE FROM refresh_tokens WHERE session_id = ?")
        .bind(session)
        .execute(&mut *c)
        .await?;
    q("DELETE FROM sessions WHERE id = ?")
        .bind(session)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn accept_in(c: &mut Conn, mut m: NewMessage) -> Result<AcceptOutcome> {
    // Rows are keyed by the message key (source and envelope id), so only
    // the same source's retry meets an existing row.
    let id = m.key.to_vec();
    // Assume every local recipient exists; corrected below if some are
    // skipped (federated delivery), which saves a statement per message.
    let planned = (m.local.len() + m.remote.len()) as i64;
    let inserted = q("INSERT INTO messages (id, envelope, digest, origin, kind, body, refs, received_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
        .bind(&id[..])
        .bind(m.id.as_bytes().as_slice())
        .bind(&m.digest[..])
        .bind(m.origin.as_str())
        .bind(kind_code(m.kind))
        .bind(m.body.as_slice())
        .bind(planned)
        .bind(i(m.received_ms))
        .bind(i(m.expires_ms))
        .execute(&mut *c)
        .await?
        .rows_affected();
    if inserted == 0 {
        let row = q("SELECT digest, received_ms FROM messages WHERE id = ?")
            .bind(&id[..])
            .fetch_one(&mut *c)
            .await?;
        let digest: Vec<u8> = row.try_get(0)?;
        return if digest == m.digest {
            Ok(AcceptOutcome::Duplicate {
                accepted_ms: u(row.try_get(1)?),
            })
        } else {
            Err(RelayError::Conflict("envelope id already used"))
        };
    }
    let mut delivered = Vec::with_capacity(m.local.len());
    let local = std::mem::take(&mut m.local);
    for r in local {
        let bytes = i(m.entry_bytes(&r));
        // One statement claims the sequence number and checks depth and size.
        let row = q("UPDATE devices SET next_seq = next_seq + 1, depth = depth + 1, bytes = bytes + ? WHERE username = ? AND device = ? AND depth < ? AND bytes + ? <= ? RETURNING pk, next_seq - 1, depth, bytes")
            .bind(bytes)
            .bind(r.user.as_str())
            .bind(i64::from(r.device.0))
            .bind(i64::from(m.depth_max))
            .bind(bytes)
            .bind(i(m.bytes_max))
            .fetch_optional(&mut *c)
            .await?;
        let Some(row) = row else {
            if device_pk(c, &r.user, r.device).await?.is_some() {
                return Err(RelayError::MailboxFull);
            }
            if m.skip_unknown {
                continue;
            }
            let account = q("SELECT 1 FROM accounts WHERE username = ?")
                .bind(r.user.as_str())
                .fetch_optional(&mut *c)
                .await?;
            return Err(if account.is_some() {
                RelayError::UnknownDevice
            } else {
                RelayError::UnknownUser
            });
        };
        let pk: i64 = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        if let Some(k) = &r.quota_key {
            let counted = [Share {
                pk,
                key: k,
                entries: 1,
                bytes,
                deep: deep(&row, m.per_source_max, m.per_source_bytes_max)?,
            }];
            if !count_shares(c, &counted, m.per_source_max, m.per_source_bytes_max).await? {
                return Err(RelayError::MailboxQuota);
            }
        }
        q("INSERT INTO mailbox (device_pk, seq, message_id, header, expires_ms, quota_key, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(pk)
            .bind(seq)
            .bind(&id[..])
            .bind(r.header.as_slice())
            .bind(i(m.expires_ms))
            .bind(r.quota_key.as_ref().map(|k| k.as_slice()))
            .bind(bytes)
            .execute(&mut *c)
            .await?;
        delivered.push(MailboxRef {
            user: r.user,
            device: r.device,
            seq: u(seq),
        });
    }
    if delivered.is_empty() && m.remote.is_empty() {
        return Err(RelayError::UnknownDevice);
    }
    insert_outbox(c, &m).await?;
    let refs = (delivered.len() + m.remote.len()) as i64;
    if refs != planned {
        q("UPDATE messages SET refs = ? WHERE id = ?")
            .bind(refs)
            .bind(&id[..])
            .execute(&mut *c)
            .await?;
    }
    Ok(AcceptOutcome::Accepted { delivered })
}

async fn insert_outbox(c: &mut Conn, m: &NewMessage) -> Result<()> {
    insert_outboxes(c, std::iter::once(m)).await
}

/// One outbox row per (message, destination relay), in multi-row statements.
async fn insert_outboxes<'m>(c: &mut Conn, messages: impl Iterator<Item = &'m NewMessage>) -> Result<()> {
    // (relay, message key, recipients, sealed sender, due, expires)
    type OutboxRow<'a> = (&'a str, &'a [u8], Vec<u8>, Option<&'a [u8]>, i64, i64);
    let mut rows: Vec<OutboxRow<'m>> = Vec::new();
    for m in messages {
        for remote in &m.remote {
            rows.push((
                remote.relay.as_str(),
                m.key.as_slice(),
                encode(&remote.recipients)?,
                m.sender.as_ref().map(|b| b.as_slice()),
                // Due at once; its acceptance time keeps the outbox in
                // due-time order, which `outbox_take` reads by index.
                i(m.received_ms),
                i(m.expires_ms),
            ));
        }
    }
    for chunk in rows.chunks(CHUNK_ROWS) {
        // `attempts` starts at its column default, 0.
        let sql = format!(
            "INSERT INTO outbox (relay, message_id, recipients, sender, next_attempt_ms, expires_ms) VALUES {}",
            row_list(1, 6, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (relay, id, recipients, sender, due, expires) in chunk {
            query = query
                .bind(*relay)
                .bind(*id)
                .bind(&recipients[..])
                .bind(*sender)
                .bind(*due)
                .bind(*expires);
        }
        query.execute(&mut *c).await?;
    }
    Ok(())
}

/// Rows per multi-row statement (SQLite allows 32766 parameters, PostgreSQL 65535).
const CHUNK_ROWS: usize = 400;

/// Placeholder number `n` (1-based) in this dialect.
fn ph(n: usize) -> String {
    if PG { format!("${n}") } else { "?".to_owned() }
}

/// `rows` groups of `cols` placeholders, numbered from `first`.
fn row_list(first: usize, cols: usize, rows: usize) -> String {
    let mut out = String::with_capacity(rows * (cols * 4 + 3));
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for col in 0..cols {
            if col > 0 {
                out.push(',');
            }
            out.push_str(&ph(n));
            n += 1;
        }
        out.push(')');
    }
    out
}

/// One fewer reference to a message per occurrence of its id in `ids` (the
/// message ids of deleted mailbox or outbox entries); a body goes with its
/// message's last reference.
///
/// One `UPDATE … WHERE id IN (…)` per distinct `n` (almost always just
/// `n = 1`). Not `UPDATE … FROM (VALUES …)`: without table statistics
/// SQLite plans that join as a scan of all of `messages` probing the
/// values, so every batch of acks cost time proportional to every message
/// still kept for deduplication (57 µs per released row after 100,000
/// messages; the scan was the gateway's bottleneck).
async fn release_many(c: &mut Conn, ids: Vec<Vec<u8>>) -> Result<()> {
    let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let mut by_count: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
    for (id, n) in counts {
        by_count.entry(n).or_default().push(id);
    }
    for (n, ids) in by_count {
        for chunk in ids.chunks(CHUNK_ROWS) {
            let sql = format!(
                "UPDATE messages SET refs = refs - {}, body = CASE WHEN refs <= {} THEN NULL ELSE body END WHERE id IN ({})",
                ph(1),
                ph(2),
                in_list(3, chunk.len())
            );
            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(n).bind(n);
            for id in chunk {
                query = query.bind(&id[..]);
            }
            query.execute(&mut *c).await?;
        }
    }
    Ok(())
}

/// Applies every ack of a batch with four statements: look up the devices,
/// delete their entries, release the messages, lower the depths. Returns the
/// number of entries each job deleted (an entry acked twice in one batch
/// counts for the first job). Unknown devices and seqs delete nothing.
async fn ack_many(c: &mut Conn, acks: &Acks) -> Result<Vec<u32>> {
    let mut devices: Vec<(&Username, DeviceId)> = acks.iter().map(|a| (&a.user, a.device)).collect();
    devices.sort_unstable();
    devices.dedup();
    let mut pks: HashMap<(&Username, DeviceId), i64> = HashMap::with_capacity(devices.len());
    for chunk in devices.chunks(CHUNK_ROWS) {
        let sql = format!(
            "WITH d(username, device) AS (VALUES {}) SELECT devices.pk, devices.username, devices.device FROM devices JOIN d ON devices.username = d.username AND devices.device = d.device",
            row_list(1, 2, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (user, device) in chunk {
            query = query.bind(user.as_str()).bind(i64::from(device.0));
        }
        for r in query.fetch_all(&mut *c).await? {
            let user = username(r.try_get(1)?)?;
            let device = device_id(r.try_get(2)?)?;
            if let Ok(k) = devices.binary_search(&(&user, device)) {
                pks.insert(devices[k], r.try_get(0)?);
            }
        }
    }
    // (device pk, seq) -> index of the first job acking it.
    let mut wanted: HashMap<(i64, i64), usize> = HashMap::new();
    for (n, ack) in acks.iter().enumerate() {
        if let Some(&pk) = pks.get(&(&ack.user, ack.device)) {
            for seq in &ack.seqs {
                wanted.entry((pk, i(*seq))).or_insert(n);
            }
        }
    }
    let keys: Vec<(i64, i64)> = wanted.keys().copied().collect();
    let mut counts = vec![0u32; acks.len()];
    let mut released = Vec::new();
    let mut emptied = Vec::new();
    for chunk in keys.chunks(CHUNK_ROWS) {
        let sql = format!(
            "WITH a(pk, seq) AS (VALUES {}) DELETE FROM mailbox WHERE (device_pk, seq) IN (SELECT pk, seq FROM a) RETURNING device_pk, seq, message_id, bytes",
            row_list(1, 2, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (pk, seq) in chunk {
            query = query.bind(*pk).bind(*seq);
        }
        for r in query.fetch_all(&mut *c).await? {
            let pk: i64 = r.try_get(0)?;
            let seq: i64 = r.try_get(1)?;
            if let Some(&n) = wanted.get(&(pk, seq)) {
                counts[n] += 1;
            }
            released.push(r.try_get(2)?);
            emptied.push((pk, r.try_get(3)?));
        }
    }
    release_many(c, released).await?;
    lower_depths(c, emptied).await?;
    Ok(counts)
}

/// Lowers each device's mailbox depth by one and its bytes by the entry's
/// per occurrence of its pk in `devices` (pk and bytes of deleted entries).
async fn lower_depths(c: &mut Conn, devices: Vec<(i64, i64)>) -> Result<()> {
    let mut depths: HashMap<i64, (i64, i64)> = HashMap::new();
    for (pk, bytes) in devices {
        let d = depths.entry(pk).or_default();
        d.0 += 1;
        d.1 += bytes;
    }
    let depths: Vec<(i64, (i64, i64))> = depths.into_iter().collect();
    for chunk in depths.chunks(CHUNK_ROWS) {
        let sql = format!(
            "WITH d(pk, n, b) AS (VALUES {}) UPDATE devices SET depth = depth - d.n, bytes = bytes - d.b FROM d WHERE devices.pk = d.pk",
            row_list(1, 3, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (pk, (n, b)) in chunk {
            query = query.bind(*pk).bind(*n).bind(*b);
        }
        query.execute(&mut *c).await?;
    }
    Ok(())
}

/// `count` placeholders separated by commas, numbered from `first`.
fn in_list(first: usize, count: usize) -> String {
    (first..first + count).map(ph).collect::<Vec<_>>().join(",")
}

/// What some new entries add to one (device, quota key) share.
struct Share<'a> {
    pk: i64,
    key: &'a [u8; 16],
    entries: i64,
    bytes: i64,
    /// The device's mailbox, these entries included, holds more than one
    /// share may (in entries or bytes), so this one must be counted.
    deep: bool,
}

/// Whether a device row returned by a claim (`…, depth, bytes` as its last
/// two columns) is deep enough that a source could exceed its share.
fn deep(row: &Row, entries_max: u32, bytes_max: u64) -> Result<bool> {
    let n = row.len();
    let depth: i64 = row.try_get(n - 2)?;
    let bytes: i64 = row.try_get(n - 1)?;
    Ok(depth > i64::from(entries_max) || bytes > i(bytes_max))
}

/// Checks that each share stays within `entries_max` and `bytes_max`.
///
/// Counted only where it could matter: a source cannot hold more of a
/// mailbox than the mailbox holds, so while a device's mailbox (with the
/// new entries) is within one share, nothing is read. Only a deep mailbox
/// (a device offline for long, or a flood) costs a count of the source's
/// entries, over that device's rows alone (bounded by the depth limit).
/// No counter is kept, so acks and purge stay exactly as they were: the
/// hot path (online devices, shallow mailboxes) pays nothing.
async fn count_shares(
    c: &mut Conn,
    shares: &[Share<'_>],
    entries_max: u32,
    bytes_max: u64,
) -> Result<bool> {
    let (entries_max, bytes_max) = (i64::from(entries_max), i(bytes_max));
    for s in shares {
        if s.entries > entries_max || s.bytes > bytes_max {
            return Ok(false);
        }
        if !s.deep {
            continue;
        }
        let row = q("SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM mailbox WHERE device_pk = ? AND quota_key = ?")
            .bind(s.pk)
            .bind(s.key.as_slice())
            .fetch_one(&mut *c)
            .await?;
        let held: i64 = row.try_get(0)?;
        let held_bytes: i64 = row.try_get(1)?;
        if held + s.entries > entries_max || held_bytes.saturating_add(s.bytes) > bytes_max {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Stores several local messages with a few multi-row statements: messages,
/// then one sequence claim per recipient device, then (for mailboxes deeper
/// than one share only) the per-source counts, then mailbox rows. Returns `None` (caller rolls back and goes
/// one by one) if any message needs individual treatment.
async fn accept_many(c: &mut Conn, batch: &Accepts) -> Result<Option<Vec<AcceptOutcome>>> {
    let mut ids: Vec<&[u8; 16]> = batch.iter().map(|(m, _, _)| &m.key).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) || batch.iter().any(|(m, _, _)| m.local.is_empty() && m.remote.is_empty()) {
        return Ok(None);
    }
    for chunk in batch.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO messages (id, envelope, digest, origin, kind, body, refs, received_ms, expires_ms) VALUES {} ON CONFLICT (id) DO NOTHING",
            row_list(1, 9, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (m, _, _) in chunk {
            query = query
                .bind(m.key.as_slice())
                .bind(m.id.as_bytes().as_slice())
                .bind(&m.digest[..])
                .bind(m.origin.as_str())
                .bind(kind_code(m.kind))
                .bind(m.body.as_slice())
                .bind((m.local.len() + m.remote.len()) as i64)
                .bind(i(m.received_ms))
                .bind(i(m.expires_ms));
        }
        let inserted = query.execute(&mut *c).await?.rows_affected();
        if inserted != chunk.len() as u64 {
            // A retry (or a conflicting id) is in the batch.
            return Ok(None);
        }
    }
    // Entries and bytes per recipient device, in batch order.
    let mut order: Vec<(&Username, DeviceId)> = Vec::new();
    let mut counts: HashMap<(&Username, DeviceId), Claim> = HashMap::new();
    for (m, _, _) in batch {
        for r in &m.local {
            let e = counts.entry((&r.user, r.device)).or_insert_with(|| {
                order.push((&r.user, r.device));
                Claim::default()
            });
            e.entries += 1;
            e.bytes += i(m.entry_bytes(r));
        }
    }
    // Claim in a fixed order, so two processes sharing PostgreSQL lock
    // device rows in the same order and cannot deadlock each other here.
    order.sort();
    // The batch is held to its strictest limits; a message that would only
    // pass under its own looser ones is then stored one by one.
    let min = |f: fn(&NewMessage) -> u64| batch.iter().map(|(m, _, _)| f(m)).min().unwrap_or(0);
    let depth_max = u32::try_from(min(|m| u64::from(m.depth_max))).unwrap_or(u32::MAX);
    let bytes_max = min(|m| m.bytes_max);
    let per_source_max = u32::try_from(min(|m| u64::from(m.per_source_max))).unwrap_or(u32::MAX);
    let per_source_bytes_max = min(|m| m.per_source_bytes_max);
    let share = (per_source_max, per_source_bytes_max);
    if !claim_sequences(c, &order, &mut counts, depth_max, bytes_max, share).await? {
        // Unknown device or full mailbox: sort it out one by one.
        return Ok(None);
    }
    let mut shares: BTreeMap<(i64, &[u8; 16]), (i64, i64, bool)> = BTreeMap::new();
    for (m, _, _) in batch {
        for r in &m.local {
            if let (Some(key), Some(claim)) = (&r.quota_key, counts.get(&(&r.user, r.device))) {
                let s = shares.entry((claim.pk, key)).or_insert((0, 0, claim.deep));
                s.0 += 1;
                s.1 += i(m.entry_bytes(r));
            }
        }
    }
    let shares: Vec<Share<'_>> = shares
        .into_iter()
        .map(|((pk, key), (entries, bytes, deep))| Share {
            pk,
            key,
            entries,
            bytes,
            deep,
        })
        .collect();
    if !count_shares(c, &shares, per_source_max, per_source_bytes_max).await? {
        // A source over its share: sort it out one by one.
        return Ok(None);
    }
    // (device pk, seq, message key, header, expires, quota key, bytes)
    type MailboxRow<'a> = (i64, i64, &'a [u8], &'a [u8], i64, Option<&'a [u8]>, i64);
    let mut rows: Vec<MailboxRow<'_>> = Vec::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    for (m, _, _) in batch {
        let mut delivered = Vec::with_capacity(m.local.len());
        for r in &m.local {
            let Some(slot) = counts.get_mut(&(&r.user, r.device)) else {
                return Ok(None);
            };
            let seq = slot.next;
            slot.next += 1;
            rows.push((
                slot.pk,
                seq,
                m.key.as_slice(),
                r.header.as_slice(),
                i(m.expires_ms),
                r.quota_key.as_ref().map(|k| k.as_slice()),
                i(m.entry_bytes(r)),
            ));
            delivered.push(MailboxRef {
                user: r.user.clone(),
                device: r.device,
                seq: u(seq),
            });
        }
        outcomes.push(AcceptOutcome::Accepted { delivered });
    }
    for chunk in rows.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO mailbox (device_pk, seq, message_id, header, expires_ms, quota_key, bytes) VALUES {}",
            row_list(1, 7, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for (pk, seq, id, header, expires, key, bytes) in chunk {
            query = query
                .bind(*pk)
                .bind(*seq)
                .bind(*id)
                .bind(*header)
                .bind(*expires)
                .bind(*key)
                .bind(*bytes);
        }
        query.execute(&mut *c).await?;
    }
    insert_outboxes(c, batch.iter().map(|(m, _, _)| m)).await?;
    Ok(Some(outcomes))
}

/// What a batch claims of one device's mailbox.
#[derive(Default)]
struct Claim {
    /// Entries to add.
    entries: i64,
    /// Their bytes.
    bytes: i64,
    /// The device's pk (filled in by the claim).
    pk: i64,
    /// The next sequence number to hand out (filled in by the claim).
    next: i64,
    /// The mailbox, claim included, is deeper than one source's share
    /// (filled in by the claim; see [`count_shares`]).
    deep: bool,
}

/// Claims `entries` sequence numbers and `bytes` for each device in `order`
/// (sorted); fills in each claim's `pk` and first seq. One statement per
/// chunk of devices instead of one per device. False if a device is unknown
/// or its mailbox would exceed `depth_max` or `bytes_max`.
async fn claim_sequences<'a>(
    c: &mut Conn,
    order: &[(&'a Username, DeviceId)],
    counts: &mut HashMap<(&'a Username, DeviceId), Claim>,
    depth_max: u32,
    bytes_max: u64,
    share: (u32, u64),
) -> Result<bool> {
    for chunk in order.chunks(CHUNK_ROWS) {
        if PG {
            // Row locks in key order first: the UPDATE … FROM below locks
            // in join order, which two processes could see differently.
            let sql = format!(
                "WITH v(username, device) AS (VALUES {}) SELECT 1 FROM devices JOIN v ON devices.username = v.username AND devices.device = v.device ORDER BY devices.username, devices.device FOR UPDATE OF devices",
                row_list(1, 2, chunk.len())
            );
            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            for key in chunk {
                query = query.bind(key.0.as_str()).bind(i64::from(key.1.0));
            }
            query.fetch_all(&mut *c).await?;
        }
        let n = chunk.len() * 4;
        let sql = format!(
            "WITH v(username, device, k, b) AS (VALUES {}) UPDATE devices SET next_seq = devices.next_seq + v.k, depth = devices.depth + v.k, bytes = devices.bytes + v.b FROM v WHERE devices.username = v.username AND devices.device = v.device AND devices.depth + v.k <= {} AND devices.bytes + v.b <= {} RETURNING devices.pk, devices.username, devices.device, devices.next_seq, devices.depth, devices.bytes",
            row_list(1, 4, chunk.len()),
            ph(n + 1),
            ph(n + 2)
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for key in chunk {
            let (k, b) = counts.get(key).map_or((0, 0), |c| (c.entries, c.bytes));
            query = query
                .bind(key.0.as_str())
                .bind(i64::from(key.1.0))
                .bind(k)
                .bind(b);
        }
        let rows = query
            .bind(i64::from(depth_max))
            .bind(i(bytes_max))
            .fetch_all(&mut *c)
            .await?;
        if rows.len() != chunk.len() {
            return Ok(false);
        }
        for r in rows {
            let user = username(r.try_get(1)?)?;
            let device = device_id(r.try_get(2)?)?;
            let Ok(k) = chunk.binary_search(&(&user, device)) else {
                return Ok(false);
            };
            let Some(slot) = counts.get_mut(&chunk[k]) else {
                return Ok(false);
            };
            let next: i64 = r.try_get(3)?;
            slot.pk = r.try_get(0)?;
            slot.next = next - slot.entries;
            slot.deep = deep(&r, share.0, share.1)?;
        }
    }
    Ok(true)
}

const OUTBOX_SELECT: &str = "SELECT o.id, o.relay, g.envelope, g.kind, g.body, o.recipients, o.expires_ms, o.attempts, o.sender FROM outbox o JOIN messages g ON g.id = o.message_id";

fn outbox_row(r: &Row) -> Result<OutboxEntry> {
    let sender = r.try_get::<Option<Vec<u8>>, _>(8)?.map(Bytes);
    let recipients: Vec<u8> = r.try_get(5)?;
    Ok(OutboxEntry {
        id: r.try_get(0)?,
        relay: relay_name(r.try_get(1)?)?,
        envelope: envelope_id(r.try_get(2)?)?,
        kind: kind_from_code(r.try_get(3)?),
        body: Bytes(r.try_get::<Option<Vec<u8>>, _>(4)?.unwrap_or_default()),
        recipients: decode::<Vec<FedRecipient>>(&recipients)?,
        expires_ms: u(r.try_get(6)?),
        attempts: u32::try_from(r.try_get::<i64, _>(7)?).unwrap_or(u32::MAX),
        sender,
    })
}

#[async_trait]
impl Store for SqlStore {
    async fn create_invite(&self, invite: InviteRecord) -> Result<()> {
        self.write(move |c| {
            Box::pin(async move {
                q("INSERT INTO invites (code_hash, expires_ms, used) VALUES (?, ?, 0)")
                    .bind(&invite.code_hash[..])
                    .bind(i(invite.expires_ms))
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn register(&self, account: NewAccount) -> Result<()> {
        let list = encode(&account.device_list)?;
        self.write(move |c| {
            Box::pin(async move {
                let user = account.device.user.as_str();
                // The invite first: without a valid one, whether a name is
                // taken is none of the caller's business. A taken name
                // below fails the operation, whose savepoint (or
                // transaction) then undoes the invite's use.
                if let Some(code) = account.invite {
                    let used = q("UPDATE invites SET used = 1 WHERE code_hash = ? AND used = 0 AND expires_ms > ?")
                        .bind(&code[..])
                        .bind(i(account.now_ms))
                        .execute(&mut *c)
                        .await?
                        .rows_affected();
                    if used == 0 {
                        return Err(RelayError::InvalidInvite);
                    }
                }
                let inserted = q("INSERT INTO accounts (username, created_ms, list_version, device_list) VALUES (?, ?, ?, ?) ON CONFLICT (username) DO NOTHING")
                    .bind(user)
                    .bind(i(account.now_ms))
                    .bind(i(account.device_list.list.version))
                    .bind(&list[..])
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    return Err(RelayError::UsernameTaken);
                }
                insert_device(c, &account.device).await
            })
        })
        .await
    }

    async fn device(&self, user: &Username, device: DeviceId) -> Result<Option<DeviceRecord>> {
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE username = ? AND device = ?"));
        let row = q(sql.as_str())
            .bind(user.as_str())
            .bind(i64::from(device.0))
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(device_row).transpose()
    }

    async fn devices(&self, user: &Username) -> Result<Vec<DeviceRecord>> {
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE username = ? ORDER BY device"));
        let rows = q(sql.as_str())
            .bind(user.as_str())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(device_row).collect()
    }

    async fn device_list(&self, user: &Username) -> Result<Option<SignedDeviceList>> {
        let row = q("SELECT device_list FROM accounts WHERE username = ?")
            .bind(user.as_str())
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some(r) => Ok(Some(decode(&r.try_get::<Vec<u8>, _>(0)?)?)),
            None => Ok(None),
        }
    }

    async fn put_challenge(&self, ch: ChallengeRecord) -> Result<()> {
        self.write(move |c| {
            Box::pin(async move {
                q("INSERT INTO challenges (id, username, device, nonce, expires_ms) VALUES (?, ?, ?, ?, ?)")
                    .bind(ch.id.as_str())
                    .bind(ch.user.as_str())
                    .bind(i64::from(ch.device.0))
                    .bind(&ch.nonce[..])
                    .bind(i(ch.expires_ms))
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRecord>> {
        let id = id.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                let row = q("DELETE FROM challenges WHERE id = ? RETURNING id, username, device, nonce, expires_ms")
                    .bind(id.as_str())
                    .fetch_optional(&mut *c)
                    .await?;
                let Some(r) = row else { return Ok(None) };
                let nonce: Vec<u8> = r.try_get(3)?;
                Ok(Some(ChallengeRecord {
                    id: r.try_get(0)?,
                    user: username(r.try_get(1)?)?,
                    device: device_id(r.try_get(2)?)?,
                    nonce: nonce.try_into().map_err(|_| corrupt("nonce"))?,
                    expires_ms: u(r.try_get(4)?),
                }))
            })
        })
        .await
    }

    async fn create_session(&self, s: NewSession) -> Result<()> {
        self.write(move |c| {
            Box::pin(async move {
                q("INSERT INTO sessions (id, username, device) VALUES (?, ?, ?)")
                    .bind(s.id.as_str())
                    .bind(s.user.as_str())
                    .bind(i64::from(s.device.0))
                    .execute(&mut *c)
                    .await?;
                insert_tokens(c, &s.id, &s.tokens).await
            })
        })
        .await
    }

    async fn access(&self, token: &TokenHash) -> Result<Option<AccessRecord>> {
        let row = q("SELECT a.session_id, s.username, s.device, a.expires_ms, COALESCE(d.otk_count, 0) FROM access_tokens a JOIN sessions s ON s.id = a.session_id LEFT JOIN devices d ON d.username = s.username AND d.device = s.device WHERE a.hash = ?")
            .bind(&token[..])
            .fetch_optional(&self.read)
            .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(AccessRecord {
            session: r.try_get(0)?,
            user: username(r.try_get(1)?)?,
            device: device_id(r.try_get(2)?)?,
            expires_ms: u(r.try_get(3)?),
            one_time_count: u32::try_from(r.try_get::<i64, _>(4)?).unwrap_or(0),
        }))
    }

    async fn rotate_refresh(
        &self,
        token: &TokenHash,
        now_ms: u64,
        next: TokenHashes,
    ) -> Result<RotateOutcome> {
        let token = *token;
        self.write(move |c| {
            Box::pin(async move {
                let row = q("SELECT session_id, expires_ms, used FROM refresh_tokens WHERE hash = ?")
                    .bind(&token[..])
                    .fetch_optional(&mut *c)
                    .await?;
                let Some(r) = row else { return Ok(RotateOutcome::Invalid) };
                let session: String = r.try_get(0)?;
                let expires_ms = u(r.try_get(1)?);
                let used: i64 = r.try_get(2)?;
                if used != 0 {
                    revoke(c, &session).await?;
                    return Ok(RotateOutcome::Reused { session });
                }
                if expires_ms <= now_ms {
                    return Ok(RotateOutcome::Invalid);
                }
                // Conditional on `used = 0`, so of two concurrent
                // presentations (PostgreSQL, several processes) one wins and
                // the other is seen as reuse.
                let marked = q("UPDATE refresh_tokens SET used = 1 WHERE hash = ? AND used = 0")
                    .bind(&token[..])
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                if marked == 0 {
                    revoke(c, &session).await?;
                    return Ok(RotateOutcome::Reused { session });
                }
                let row = q("SELECT username, device FROM sessions WHERE id = ?")
                    .bind(session.as_str())
                    .fetch_optional(&mut *c)
                    .await?;
                let Some(s) = row else { return Ok(RotateOutcome::Invalid) };
                q("DELETE FROM access_tokens WHERE session_id = ?")
                    .bind(session.as_str())
                    .execute(&mut *c)
                    .await?;
                insert_tokens(c, &session, &next).await?;
                Ok(RotateOutcome::Rotated {
                    session,
                    user: username(s.try_get(0)?)?,
                    device: device_id(s.try_get(1)?)?,
                })
            })
        })
        .await
    }

    async fn revoke_session(&self, session: &str) -> Result<()> {
        let session = session.to_owned();
        self.write(move |c| Box::pin(async move { revoke(c, &session).await }))
            .await
    }

    async fn put_link(&self, l: LinkRecord) -> Result<()> {
        self.write(move |c| {
            Box::pin(async move {
                let inserted = q("INSERT INTO links (code, secret_hash, username, identity_key, dh_key, dh_key_signature, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (code) DO NOTHING")
                    .bind(l.code.as_str())
                    .bind(&l.secret_hash[..])
                    .bind(l.user.as_str())
                    .bind(l.keys.identity_key.as_slice())
                    .bind(l.keys.dh_key.as_slice())
                    .bind(l.keys.dh_key_signature.as_slice())
                    .bind(i(l.expires_ms))
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    return Err(RelayError::Conflict("link code in use"));
                }
                Ok(())
            })
        })
        .await
    }

    async fn link(&self, code: &str) -> Result<Option<LinkRecord>> {
        let row = q("SELECT code, secret_hash, username, identity_key, dh_key, dh_key_signature, expires_ms, approved_device FROM links WHERE code = ?")
            .bind(code)
            .fetch_optional(&self.read)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let secret: Vec<u8> = r.try_get(1)?;
        Ok(Some(LinkRecord {
            code: r.try_get(0)?,
            secret_hash: secret.try_into().map_err(|_| corrupt("secret hash"))?,
            user: username(r.try_get(2)?)?,
            keys: DeviceKeys {
                identity_key: Bytes(r.try_get(3)?),
                dh_key: Bytes(r.try_get(4)?),
                dh_key_signature: Bytes(r.try_get(5)?),
            },
            expires_ms: u(r.try_get(6)?),
            approved: r
                .try_get::<Option<i64>, _>(7)?
                .map(device_id)
                .transpose()?,
        }))
    }

    async fn approve_link(
        &self,
        code: &str,
        device: DeviceRecord,
        list: SignedDeviceList,
        devices_max: u32,
        now_ms: u64,
    ) -> Result<()> {
        let code = code.to_owned();
        let encoded = encode(&list)?;
        self.write(move |c| {
            Box::pin(async move {
                let row = q("SELECT approved_device, expires_ms FROM links WHERE code = ?")
                    .bind(code.as_str())
                    .fetch_optional(&mut *c)
                    .await?;
                let pending = match &row {
                    Some(r) => {
                        r.try_get::<Option<i64>, _>(0)?.is_none()
                            && u(r.try_get(1)?) > now_ms
                    }
                    None => false,
                };
                if !pending {
                    return Err(RelayError::InvalidLinkCode);
                }
                let user = device.user.as_str();
                let row = q("SELECT list_version, (SELECT COUNT(*) FROM devices WHERE username = ?) FROM accounts WHERE username = ?")
                    .bind(user)
                    .bind(user)
                    .fetch_optional(&mut *c)
                    .await?
                    .ok_or(RelayError::UnknownUser)?;
                let version = u(row.try_get(0)?);
                let count = u(row.try_get(1)?);
                if count >= u64::from(devices_max) {
                    return Err(RelayError::TooManyDevices);
                }
                if list.list.version != version + 1 {
                    return Err(RelayError::Conflict("device list changed meanwhile"));
                }
                if device_pk(c, &device.user, device.device).await?.is_some() {
                    return Err(RelayError::Conflict("device list changed meanwhile"));
                }
                insert_device(c, &device).await?;
                q("UPDATE accounts SET list_version = ?, device_list = ? WHERE username = ?")
                    .bind(i(list.list.version))
                    .bind(&encoded[..])
                    .bind(user)
                    .execute(&mut *c)
                    .await?;
                q("UPDATE links SET approved_device = ? WHERE code = ?")
                    .bind(i64::from(device.device.0))
                    .bind(code.as_str())
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn set_signed_prekey(
        &self,
        user: &Username,
        device: DeviceId,
        key: SignedPreKey,
    ) -> Result<()> {
        let user = user.clone();
        self.write(move |c| {
            Box::pin(async move {
                let n = q("UPDATE devices SET spk_id = ?, spk_public = ?, spk_signature = ?, spk_created_ms = ? WHERE username = ? AND device = ?")
                    .bind(i64::from(key.id))
                    .bind(key.public.as_slice())
                    .bind(key.signature.as_slice())
                    .bind(i(key.created_ms))
                    .bind(user.as_str())
                    .bind(i64::from(device.0))
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Err(RelayError::UnknownDevice);
                }
                Ok(())
            })
        })
        .await
    }

    async fn add_one_time_prekeys(
        &self,
        user: &Username,
        device: DeviceId,
        keys: Vec<OneTimePreKey>,
        cap: u32,
    ) -> Result<u32> {
        let user = user.clone();
        self.write(move |c| {
            Box::pin(async move {
                let pk = device_pk(c, &user, device)
                    .await?
                    .ok_or(RelayError::UnknownDevice)?;
                for k in &keys {
                    q("INSERT INTO one_time_prekeys (device_pk, key_id, public) VALUES (?, ?, ?) ON CONFLICT (device_pk, key_id) DO UPDATE SET public = excluded.public")
                        .bind(pk)
                        .bind(i64::from(k.id))
                        .bind(k.public.as_slice())
                        .execute(&mut *c)
                        .await?;
                }
                let count: i64 = q("SELECT COUNT(*) FROM one_time_prekeys WHERE device_pk = ?")
                    .bind(pk)
                    .fetch_one(&mut *c)
                    .await?
                    .try_get(0)?;
                if count > i64::from(cap) {
                    // The savepoint rolls the inserts back.
                    return Err(RelayError::TooManyPrekeys);
                }
                q("UPDATE devices SET otk_count = ? WHERE pk = ?")
                    .bind(count)
                    .bind(pk)
                    .execute(&mut *c)
                    .await?;
                Ok(u32::try_from(count).unwrap_or(u32::MAX))
            })
        })
        .await
    }

    async fn take_one_time_prekey(
        &self,
        user: &Username,
        device: DeviceId,
    ) -> Result<(Option<OneTimePreKey>, u32)> {
        let user = user.clone();
        self.write(move |c| {
            Box::pin(async move {
                let pk = device_pk(c, &user, device)
                    .await?
                    .ok_or(RelayError::UnknownDevice)?;
                // Delete-and-return in one statement: the key is gone the
                // moment anyone sees it. SKIP LOCKED lets concurrent
                // PostgreSQL transactions take different keys.
                let sql = if PG {
                    "DELETE FROM one_time_prekeys WHERE id = (SELECT id FROM one_time_prekeys WHERE device_pk = ? ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING key_id, public"
                } else {
                    "DELETE FROM one_time_prekeys WHERE id = (SELECT id FROM one_time_prekeys WHERE device_pk = ? ORDER BY id LIMIT 1) RETURNING key_id, public"
                };
                let row = q(sql).bind(pk).fetch_optional(&mut *c).await?;
                let key = match row {
                    Some(r) => Some(OneTimePreKey {
                        id: u32::try_from(r.try_get::<i64, _>(0)?)
                            .map_err(|_| corrupt("prekey id"))?,
                        public: Bytes(r.try_get(1)?),
                    }),
                    None => None,
                };
                let delta: i64 = if key.is_some() { 1 } else { 0 };
                let left: i64 = q("UPDATE devices SET otk_count = otk_count - ? WHERE pk = ? RETURNING otk_count")
                    .bind(delta)
                    .bind(pk)
                    .fetch_one(&mut *c)
                    .await?
                    .try_get(0)?;
                Ok((key, u32::try_from(left).unwrap_or(0)))
            })
        })
        .await
    }

    async fn accept(&self, message: NewMessage) -> Result<AcceptOutcome> {
        self.queue_accept(message, None).await
    }

    async fn accept_then(&self, message: NewMessage, committed: OnCommit) -> Result<AcceptOutcome> {
        self.queue_accept(message, Some(committed)).await
    }

    async fn fetch(
        &self,
        user: &Username,
        device: DeviceId,
        after: u64,
        limit: u32,
        bytes_max: usize,
        now_ms: u64,
    ) -> Result<Vec<Envelope>> {
        use futures::TryStreamExt as _;
        // Rows are decoded one at a time and the read stops at the byte
        // cap, so a mailbox of big entries never sits in memory whole.
        let mut rows = q("SELECT m.seq, g.envelope, g.origin, m.header, g.body, g.received_ms, m.expires_ms, g.kind FROM mailbox m JOIN messages g ON g.id = m.message_id WHERE m.device_pk = (SELECT pk FROM devices WHERE username = ? AND device = ?) AND m.seq > ? AND m.expires_ms > ? ORDER BY m.seq LIMIT ?")
            .bind(user.as_str())
            .bind(i64::from(device.0))
            .bind(i(after))
            .bind(i(now_ms))
            .bind(i64::from(limit))
            .fetch(&self.read);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while bytes <= bytes_max {
            let Some(r) = rows.try_next().await? else {
                break;
            };
            let envelope = Envelope {
                seq: u(r.try_get(0)?),
                id: envelope_id(r.try_get(1)?)?,
                origin: relay_name(r.try_get(2)?)?,
                header: Bytes(r.try_get(3)?),
                body: Bytes(r.try_get::<Option<Vec<u8>>, _>(4)?.unwrap_or_default()),
                received_ms: u(r.try_get(5)?),
                expires_ms: u(r.try_get(6)?),
                kind: kind_from_code(r.try_get(7)?),
            };
            bytes += envelope.header.len() + envelope.body.len();
            out.push(envelope);
        }
        Ok(out)
    }

    async fn ack(&self, user: &Username, device: DeviceId, seqs: &[u64]) -> Result<u32> {
        let (reply, answer) = oneshot::channel();
        let job = AckJob {
            user: user.clone(),
            device,
            seqs: seqs.to_vec(),
            reply,
        };
        self.writer
            .send(Job::Ack(Box::new(job)))
            .await
            .map_err(|_| RelayError::Store("writer stopped".into()))?;
        answer
            .await
            .map_err(|_| RelayError::Store("writer stopped".into()))?
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport> {
        let now = i(now_ms);
        let mut report = PurgeReport::default();
        // Mailbox entries in bounded steps, so one purge never holds the
        // writer for long.
        loop {
            let n = self
                .write(move |c| {
                    Box::pin(async move {
                        let rows = q("DELETE FROM mailbox WHERE (device_pk, seq) IN (SELECT device_pk, seq FROM mailbox WHERE expires_ms <= ? LIMIT 500) RETURNING device_pk, message_id, bytes")
                            .bind(now)
                            .fetch_all(&mut *c)
                            .await?;
                        // Batched like acks: two statements, not two per entry.
                        let mut released = Vec::with_capacity(rows.len());
                        let mut devices = Vec::with_capacity(rows.len());
                        for r in &rows {
                            devices.push((r.try_get(0)?, r.try_get(2)?));
                            released.push(r.try_get(1)?);
                        }
                        release_many(c, released).await?;
                        lower_depths(c, devices).await?;
                        Ok(rows.len() as u64)
                    })
                })
                .await?;
            report.mailbox_entries += n;
            if n < 500 {
                break;
            }
        }
        let (messages, auth) = self
            .write(move |c| {
                Box::pin(async move {
                    let messages = q("DELETE FROM messages WHERE expires_ms <= ? AND refs <= 0")
                        .bind(now)
                        .execute(&mut *c)
                        .await?
                        .rows_affected();
                    let mut auth = 0;
                    for sql in [
                        "DELETE FROM challenges WHERE expires_ms <= ?",
                        "DELETE FROM links WHERE expires_ms <= ?",
                        "DELETE FROM invites WHERE expires_ms <= ? OR used = 1",
                        "DELETE FROM access_tokens WHERE expires_ms <= ?",
                        "DELETE FROM refresh_tokens WHERE expires_ms <= ?",
                    ] {
                        auth += q(sql).bind(now).execute(&mut *c).await?.rows_affected();
                    }
                    q("DELETE FROM sessions WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = sessions.id)")
                        .execute(&mut *c)
                        .await?;
                    Ok((messages, auth))
                })
            })
            .await?;
        report.messages = messages;
        report.auth_records = auth;
        Ok(report)
    }

    async fn outbox_take(
        &self,
        relay: &RelayName,
        max: u32,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>> {
        let relay = relay.clone();
        self.write(move |c| {
            Box::pin(async move {
                static SQL: OnceLock<String> = OnceLock::new();
                let sql = SQL.get_or_init(|| {
                    format!(
                        // Due-time order straight off the `outbox_due` index,
                        // so a backlog costs no sort and LIMIT stops early.
                        "{OUTBOX_SELECT} WHERE o.relay = ? AND o.next_attempt_ms <= ? AND o.expires_ms > ? ORDER BY o.next_attempt_ms, o.id LIMIT ?{}",
                        if PG { " FOR UPDATE OF o SKIP LOCKED" } else { "" }
                    )
                });
                let rows = q(sql.as_str())
                    .bind(relay.as_str())
                    .bind(i(now_ms))
                    .bind(i(now_ms))
                    .bind(i64::from(max))
                    .fetch_all(&mut *c)
                    .await?;
                let entries = rows.iter().map(outbox_row).collect::<Result<Vec<_>>>()?;
                // The lease: one statement per chunk, not one per entry.
                for chunk in entries.chunks(CHUNK_ROWS) {
                    let sql = format!(
                        "UPDATE outbox SET next_attempt_ms = {} WHERE id IN ({})",
                        ph(1),
                        in_list(2, chunk.len())
                    );
                    let mut query =
                        sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(i(lease_until_ms));
                    for e in chunk {
                        query = query.bind(e.id);
                    }
                    query.execute(&mut *c).await?;
                }
                Ok(entries)
            })
        })
        .await
    }

    async fn outbox_delete(&self, ids: &[OutboxId]) -> Result<u32> {
        let ids = ids.to_vec();
        self.write(move |c| {
            Box::pin(async move { delete_outboxes(c, &ids).await })
        })
        .await
    }

    async fn outbox_reschedule(&self, id: OutboxId, next_attempt_ms: u64) -> Result<()> {
        self.write(move |c| {
            Box::pin(async move {
                q("UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ? WHERE id = ?")
                    .bind(i(next_attempt_ms))
                    .bind(id)
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn outbox_expired(&self, now_ms: u64, max: u32) -> Result<Vec<OutboxEntry>> {
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!("{OUTBOX_SELECT} WHERE o.expires_ms <= ? ORDER BY o.id LIMIT ?")
        });
        let rows = q(sql.as_str())
            .bind(i(now_ms))
            .bind(i64::from(max))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(outbox_row).collect()
    }

    async fn outbox_expire(
        &self,
        id: OutboxId,
        notice: Option<NewMessage>,
    ) -> Result<Vec<MailboxRef>> {
        self.write(move |c| {
            Box::pin(async move {
                if delete_outboxes(c, &[id]).await? == 0 {
                    return Ok(Vec::new());
                }
                match notice {
                    Some(notice) => match accept_in(c, notice).await? {
                        AcceptOutcome::Accepted { delivered } => Ok(delivered),
                        AcceptOutcome::Duplicate { .. } => Ok(Vec::new()),
                    },
                    None => Ok(Vec::new()),
                }
            })
        })
        .await
    }

    async fn outbox_destinations(&self) -> Result<Vec<OutboxDestination>> {
        let rows = q("SELECT relay, COUNT(*), MIN(next_attempt_ms) FROM outbox GROUP BY relay ORDER BY relay")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxDestination {
                    relay: relay_name(r.try_get(0)?)?,
                    pending: u(r.try_get(1)?),
                    next_attempt_ms: u(r.try_get(2)?),
                })
            })
            .collect()
    }

    async fn outbox_due(
        &self,
        now_ms: u64,
        entries_max: u32,
        destinations_max: u32,
    ) -> Result<OutboxDue> {
        // The inner scan reads at most `entries_max` rows off the
        // `outbox_by_due` index (migration 0004), however large the outbox.
        let rows = q("SELECT relay, COUNT(*), MIN(next_attempt_ms) FROM (SELECT relay, next_attempt_ms, id FROM outbox WHERE next_attempt_ms <= ? AND expires_ms > ? ORDER BY next_attempt_ms, id LIMIT ?) due GROUP BY relay ORDER BY MIN(next_attempt_ms), relay LIMIT ?")
            .bind(i(now_ms))
            .bind(i(now_ms))
            .bind(i64::from(entries_max))
            .bind(i64::from(destinations_max))
            .fetch_all(&self.read)
            .await?;
        let destinations = rows
            .iter()
            .map(|r| {
                Ok(OutboxDestination {
                    relay: relay_name(r.try_get(0)?)?,
                    pending: u(r.try_get(1)?),
                    next_attempt_ms: u(r.try_get(2)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let next: Option<i64> = q("SELECT MIN(next_attempt_ms) FROM outbox WHERE next_attempt_ms > ?")
            .bind(i(now_ms))
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        Ok(OutboxDue {
            destinations,
            next_due_ms: next.map(u),
        })
    }

    async fn outbox_wake(&self, relay: &RelayName, now_ms: u64, later_than_ms: u64) -> Result<u64> {
        let relay = relay.to_string();
        self.write(move |c| {
            Box::pin(async move {
                let done = q("UPDATE outbox SET next_attempt_ms = ? WHERE relay = ? AND next_attempt_ms > ?")
                    .bind(i(now_ms))
                    .bind(relay)
                    .bind(i(later_than_ms))
                    .execute(&mut *c)
                    .await?;
                Ok(done.rows_affected())
            })
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats> {
        let r = q("SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM messages WHERE body IS NOT NULL), (SELECT COUNT(*) FROM mailbox), (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM accounts)")
            .fetch_one(&self.read)
            .await?;
        Ok(StoreStats {
            accounts: u(r.try_get(4)?),
            messages: u(r.try_get(0)?),
            bodies: u(r.try_get(1)?),
            mailbox_entries: u(r.try_get(2)?),
            outbox_entries: u(r.try_get(3)?),
        })
    }
}

async fn insert_tokens(c: &mut Conn, session: &str, t: &TokenHashes) -> Result<()> {
    q("INSERT INTO access_tokens (hash, session_id, expires_ms) VALUES (?, ?, ?)")
        .bind(&t.access[..])
        .bind(session)
        .bind(i(t.access_expires_ms))
        .execute(&mut *c)
        .await?;
    q("INSERT INTO refresh_tokens (hash, session_id, expires_ms, used) VALUES (?, ?, ?, 0)")
        .bind(&t.refresh[..])
        .bind(session)
        .bind(i(t.refresh_expires_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Deletes outbox entries and releases their messages: two statements per
/// chunk however many entries. Returns how many existed.
async fn delete_outboxes(c: &mut Conn, ids: &[OutboxId]) -> Result<u32> {
    let mut n = 0;
    for chunk in ids.chunks(CHUNK_ROWS) {
        let sql = format!(
            "DELETE FROM outbox WHERE id IN ({}) RETURNING message_id",
            in_list(1, chunk.len())
        );
        let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        let mut released = Vec::new();
        for r in query.fetch_all(&mut *c).await? {
            released.push(r.try_get(0)?);
            n += 1;
        }
        release_many(c, released).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod syncer_tests {
    use super::*;

    fn unused<'c>(_: &'c mut Conn) -> BoxFuture<'c, Result<u32>> {
        Box::pin(async { Ok(0) })
    }

    /// Hands the syncer a batch of one operation that committed with 7.
    fn answered_by(syncer: &Syncer) -> Result<u32> {
        let (reply, answer) = oneshot::channel();
        let op: Box<dyn WriteJob> = Box::new(Typed {
            op: Some(unused),
            result: Some(Ok(7)),
            reply,
            then: None,
        });
        syncer.after_sync(Committed {
            ops: vec![op],
            accepts: Vec::new(),
            acks: Vec::new(),
            fast: Fast::default(),
        });
        answer.blocking_recv().expect("answered")
    }

    #[test]
    fn batches_are_answered_after_the_wal_is_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = dir.path().join("relay.db");
        std::fs::write(dir.path().join("relay.db-wal"), b"frames").expect("wal");
        let syncer = Syncer::start(database).expect("sync thread");
        assert_eq!(answered_by(&syncer).expect("synced"), 7);
        // No WAL at all (checkpointed and removed): nothing to sync.
        std::fs::remove_file(dir.path().join("relay.db-wal")).expect("rm");
        assert_eq!(answered_by(&syncer).expect("nothing to sync"), 7);
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
            matches!(&answer, Err(RelayError::Store(m)) if m.contains("fsync of the SQLite WAL failed")),
            "{answer:?}"
        );
        // Poisoned: the writer refuses every later batch up front.
        let failure = syncer.failure().expect("remembered");
        assert!(failure.to_string().contains("until the relay restarts"), "{failure}");
        assert!(answered_by(&syncer).is_err());
    }
}
