//! A minimal deterministic executor, and the simulated [`Federation`].
//!
//! Relay calls that only touch the memory store never wait, so
//! [`run_now`] polls them once with a no-op waker. Outbox drains do wait —
//! on the simulated network — so they run as tasks: a
//! [`SimFederation::deliver`] call queues the batch for the simulation and
//! returns a future that completes when the simulation delivers the answer
//! (or the timeout) as an event. Woken tasks are polled in wake order, so
//! the interleaving depends on nothing but the event order.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use courier_protocol::{BundleRequest, BundleResponse, DeliveryAcks, DeliveryBatch, RelayName};
use courier_relay::federation::{Federation, FederationError};

/// A relay future that unexpectedly waited.
#[derive(Debug, thiserror::Error)]
#[error("a relay call waited although the memory store never blocks")]
pub struct WouldBlock;

/// Polls a future once; the relay over a memory store completes at once.
pub fn run_now<F: Future>(future: F) -> Result<F::Output, WouldBlock> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(WouldBlock),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single-threaded simulation: a poisoned lock only follows a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Task id.
pub type TaskId = u64;

struct TaskWaker {
    id: TaskId,
    ready: Arc<Mutex<VecDeque<TaskId>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        lock(&self.ready).push_back(self.id);
    }
}

type BoxTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Tasks waiting on simulated events.
#[derive(Default)]
pub struct Executor {
    next: TaskId,
    tasks: BTreeMap<TaskId, (usize, BoxTask)>,
    ready: Arc<Mutex<VecDeque<TaskId>>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl Executor {
    /// Adds a task owned by relay `owner`; it is polled on the next [`Executor::run`].
    pub fn spawn(&mut self, owner: usize, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.next;
        self.next += 1;
        self.tasks.insert(id, (owner, Box::pin(task)));
        lock(&self.ready).push_back(id);
    }

    /// Drops every task of relay `owner` (it crashed).
    pub fn kill_owner(&mut self, owner: usize) {
        self.tasks.retain(|_, (o, _)| *o != owner);
    }

    /// Polls woken tasks until none is ready. Returns the owners of the
    /// tasks polled (sorted, deduplicated): only their relays can have new
    /// calls or notices.
    pub fn run(&mut self) -> Vec<usize> {
        let mut owners = Vec::new();
        loop {
            let Some(id) = lock(&self.ready).pop_front() else {
                owners.sort_unstable();
                owners.dedup();
                return owners;
            };
            let Some((owner, task)) = self.tasks.get_mut(&id) else {
                continue;
            };
            owners.push(*owner);
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: self.ready.clone(),
            }));
            if task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                self.tasks.remove(&id);
            }
        }
    }

    /// Tasks alive.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when no task is alive.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Request id of a federation call in flight.
pub type CallId = u64;

/// A federation call the simulation must carry.
#[derive(Debug)]
pub struct OutgoingCall {
    /// Call id, echoed by the answer.
    pub id: CallId,
    /// Destination relay name.
    pub dest: RelayName,
    /// The batch.
    pub batch: DeliveryBatch,
}

#[derive(Default)]
struct Slot {
    answer: Option<Result<DeliveryAcks, FederationError>>,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Calls {
    next: CallId,
    outgoing: Vec<OutgoingCall>,
    waiting: BTreeMap<CallId, Arc<Mutex<Slot>>>,
}

/// One relay's view of the simulated federation network.
#[derive(Clone, Default)]
pub struct SimFederation {
    calls: Arc<Mutex<Calls>>,
}

impl std::fmt::Debug for SimFederation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimFederation")
    }
}

impl SimFederation {
    /// A fresh network endpoint.
    pub fn new() -> Self {
        SimFederation::default()
    }

    /// Calls issued since the last take, in issue order.
    pub fn take_outgoing(&self) -> Vec<OutgoingCall> {
        std::mem::take(&mut lock(&self.calls).outgoing)
    }

    /// Completes call `id` (first answer wins; later ones are ignored, as a
    /// late or duplicated response would be). Returns true if it was waiting.
    pub fn answer(&self, id: CallId, answer: Result<DeliveryAcks, FederationError>) -> bool {
        let Some(slot) = lock(&self.calls).waiting.remove(&id) else {
            return false;
        };
        let mut slot = lock(&slot);
        slot.answer = Some(answer);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
        true
    }

    /// Forgets every waiting call (the relay crashed).
    pub fn abandon_all(&self) {
        let mut calls = lock(&self.calls);
        calls.waiting.clear();
        calls.outgoing.clear();
    }
}

struct Answer(Arc<Mutex<Slot>>);

impl Future for Answer {
    type Output = Result<DeliveryAcks, FederationError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.0);
        match slot.answer.take() {
            Some(a) => Poll::Ready(a),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[async_trait::async_trait]
impl Federation for SimFederation {
    async fn deliver(
        &self,
        dest: &RelayName,
        batch: DeliveryBatch,
    ) -> Result<DeliveryAcks, FederationError> {
        let slot = Arc::new(Mutex::new(Slot::default()));
        {
            let mut calls = lock(&self.calls);
            let id = calls.next;
            calls.next += 1;
            calls.waiting.insert(id, slot.clone());
            calls.outgoing.push(OutgoingCall {
                id,
                dest: dest.clone(),
                batch,
            });
        }
        Answer(slot).await
    }

    async fn fetch_bundle(
        &self,
        dest: &RelayName,
        _request: BundleRequest,
    ) -> Result<BundleResponse, FederationError> {
        // Deterministic mode sets sessions up in-process (see `client`), so
        // no relay asks another for a bundle.
        Err(FederationError::Unreachable {
            relay: dest.clone(),
            reason: "key bundles are not simulated in deterministic mode".into(),
        })
    }
}
