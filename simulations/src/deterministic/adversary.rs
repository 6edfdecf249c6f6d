//! Adversaries of the deterministic mode, switched on by fault kinds: a
//! relay that replays its delivery batches, a relay that forges another
//! relay's origin, an account that floods one mailbox. Each attack goes
//! through the real relay code (`accept_batch`, `accept_message`); the
//! scenario's invariants and the relay summaries then show whether the
//! defence held (docs/simulations.md, "Adversaries").

use courier_protocol::{DeliveryBatch, EnvelopeId};

use super::exec::CallId;
use super::{Ev, SimError, World};
use crate::checker::Conversation;

/// How long after the original a replayed batch arrives.
pub const REPLAY_DELAY_MS: u64 = 1_000;
/// How long a forged batch takes to arrive (beside the honest one).
pub const FORGED_DELAY_MS: u64 = 20;

/// Called after relay `from` sent `batch` to relay `to` as call `call`:
/// the adversaries among the relays act on it.
pub(super) fn after_send(
    world: &mut World<'_>,
    from: usize,
    incarnation: u32,
    to: usize,
    call: CallId,
    batch: &DeliveryBatch,
) {
    if world.replaying.contains(&from) {
        // The same bytes again, answered to a call that is already
        // settled (the relay ignores a second answer).
        world.q.after(
            REPLAY_DELAY_MS,
            Ev::BatchArrive {
                from,
                from_incarnation: incarnation,
                to,
                call,
                batch: Box::new(batch.clone()),
            },
        );
    }
    if let Some(&claims) = world.forging.get(&from)
        && claims != to
    {
        let mut forged = batch.clone();
        forged.origin = world.relays[claims].name.clone();
        for e in &mut forged.envelopes {
            e.id = sibling(&e.id);
        }
        world.q.after(
            FORGED_DELAY_MS,
            Ev::ForgedArrive {
                from,
                to,
                batch: Box::new(forged),
            },
        );
    }
}

/// An id that names the same simulated message (the first 8 random bytes
/// are its index) but is another envelope: if a forged copy got in, the
/// checker would see that message arrive twice.
fn sibling(id: &EnvelopeId) -> EnvelopeId {
    let b = id.as_bytes();
    let mut random = [0u8; 10];
    random.copy_from_slice(&b[6..]);
    random[9] ^= 0xff;
    EnvelopeId::new(id.unix_ms(), random)
}

/// A forged batch reaches relay `to` over relay `from`'s authenticated
/// connection: the receiver judges it as it judges any batch.
pub(super) fn forged_arrive(
    world: &mut World<'_>,
    from: usize,
    to: usize,
    batch: DeliveryBatch,
) -> Result<(), SimError> {
    if !world.partitions.reachable(from, to) {
        return Ok(());
    }
    let Some(live) = &world.relays[to].live else {
        return Ok(());
    };
    let relay = live.relay.clone();
    let peer = world.relays[from].name.clone();
    let acks = super::run_now(courier_relay::federation::accept_batch(
        &relay, &peer, batch,
    ))?
    .acks;
    for a in &acks {
        match a.status {
            courier_protocol::AckStatus::Rejected(_) => {
                world.relays[to].summary.federated_refused += 1
            }
            _ => world.relays[to].summary.federated_in += 1,
        }
    }
    world.process_notices(to);
    Ok(())
}

/// User `from`'s first device queues `count` direct messages to user `to`.
pub(super) fn flood(
    world: &mut World<'_>,
    from: usize,
    to: usize,
    count: u32,
) -> Result<(), SimError> {
    let Some(&sender) = world.users[from].devices.first() else {
        return Ok(());
    };
    let recipients = world.users[to].devices.clone();
    for _ in 0..count {
        world.queue_message(sender, Conversation::Direct(to as u32), recipients.clone())?;
    }
    Ok(())
}
