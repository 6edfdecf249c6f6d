//! Federation between the relays of a [`Network`], through the relay's own
//! receiving functions: what a peer's node would call on delivery.

use std::sync::Arc;

use courier_protocol::RelayName;
use courier_protocol::federation::{BundleRequest, BundleResponse, DeliveryAcks, DeliveryBatch};
use courier_relay::Relay;
use courier_relay::federation::{Federation, FederationError, accept_batch, answer_bundle};

use crate::Network;

/// The [`Federation`] of relay `from` in a [`Network`]: a delivery is
/// [`accept_batch`] on the destination relay, authenticated as `from`; a
/// bundle request is [`answer_bundle`]. A down relay (either end) is
/// [`FederationError::Unreachable`].
#[derive(Debug, Clone)]
pub struct InProcessFederation {
    net: Network,
    from: RelayName,
}

impl InProcessFederation {
    /// Relay `from`'s view of the network.
    pub fn new(net: Network, from: RelayName) -> Self {
        Self { net, from }
    }

    fn reach(&self, dest: &RelayName) -> Result<Arc<Relay>, FederationError> {
        if self.net.is_down(&self.from) || self.net.is_down(dest) {
            return Err(FederationError::Unreachable {
                relay: dest.clone(),
                reason: "relay is down".into(),
            });
        }
        self.net
            .existing(dest)
            .ok_or_else(|| FederationError::UnknownRelay(dest.clone()))
    }
}

#[async_trait::async_trait]
impl Federation for InProcessFederation {
    async fn deliver(
        &self,
        dest: &RelayName,
        batch: DeliveryBatch,
    ) -> Result<DeliveryAcks, FederationError> {
        let relay = self.reach(dest)?;
        let acks = accept_batch(&relay, &self.from, batch).await;
        self.net.inner().notify.notify_waiters();
        Ok(acks)
    }

    async fn fetch_bundle(
        &self,
        dest: &RelayName,
        request: BundleRequest,
    ) -> Result<BundleResponse, FederationError> {
        let relay = self.reach(dest)?;
        Ok(answer_bundle(&relay, &self.from, request).await)
    }
}
