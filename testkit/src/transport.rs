//! The SDK's [`Transport`] over one relay of a [`Network`]: each call is the
//! `Relay` method the gateway's handler for that endpoint calls
//! (`gateway/src/api.rs`, `ws.rs`), after the same token check.

use std::sync::Arc;

use async_trait::async_trait;
use courier_client::TransportError;
use courier_client::transport::{Subscription, Transport};
use courier_protocol::api::{
    AckResponse, ApproveLinkRequest, ApproveLinkResponse, ChallengeRequest, ChallengeResponse,
    FetchResponse, KeyBundleResponse, LinkInfo, LinkRequest, LinkResponse, LinkStatus,
    LoginRequest, PreKeyCount, RefreshRequest, RegisterRequest, RegisterResponse,
    RegistrationPolicy, RelayInfo, SendResponse, SignedDeviceList, SignedPreKey, TokenResponse,
    UploadOneTimePreKeys,
};
use courier_protocol::ws::ServerFrame;
use courier_protocol::{
    Address, ApiError, DeviceId, ErrorCode, OutgoingMessage, RelayName, Username,
};
use courier_relay::federation::fetch_remote_bundle;
use courier_relay::{AuthedDevice, Registration, Relay, RelayError, Requester};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::network::{INJECTED_SEQ_MIN, MailboxKey};
use crate::{InProcessFederation, Network};

/// Envelopes per fetch when the client names no limit (the gateway's
/// default).
const FETCH_LIMIT_DEFAULT: u32 = 100;

/// A device's connection to its home relay in a [`Network`].
#[derive(Debug, Clone)]
pub struct RelayTransport {
    net: Network,
    name: RelayName,
}

fn api(e: RelayError) -> TransportError {
    TransportError::Api(e.to_api_error())
}

/// A value as the other side decodes it from JSON: requests that would not
/// survive the wire are refused as the gateway refuses them (`malformed`),
/// answers that would not are a bad response.
fn request<T: Serialize + DeserializeOwned>(value: &T) -> Result<T, TransportError> {
    serde_json::to_vec(value)
        .and_then(|bytes| serde_json::from_slice(&bytes))
        .map_err(|e| {
            TransportError::Api(ApiError::with_message(ErrorCode::Malformed, e.to_string()))
        })
}

fn answer<T: Serialize + DeserializeOwned>(value: T) -> Result<T, TransportError> {
    serde_json::to_vec(&value)
        .and_then(|bytes| serde_json::from_slice(&bytes))
        .map_err(|e| TransportError::BadResponse(e.to_string()))
}

impl RelayTransport {
    pub(crate) fn new(net: Network, name: RelayName) -> Self {
        Self { net, name }
    }

    /// The relay this transport talks to.
    pub fn relay_name(&self) -> &RelayName {
        &self.name
    }

    fn relay(&self) -> Result<Arc<Relay>, TransportError> {
        if self.net.is_down(&self.name) {
            return Err(TransportError::Unreachable(format!(
                "{} is down",
                self.name
            )));
        }
        self.net
            .existing(&self.name)
            .ok_or_else(|| TransportError::Unreachable(format!("no relay {}", self.name)))
    }

    fn key(&self, device: &AuthedDevice) -> MailboxKey {
        (self.name.clone(), device.user.clone(), device.device)
    }

    /// The relay and the device `token` authenticates (the gateway's
    /// `require_auth`).
    async fn authed(&self, token: &str) -> Result<(Arc<Relay>, AuthedDevice), TransportError> {
        let relay = self.relay()?;
        let device = relay.authenticate(token).await.map_err(api)?;
        Ok((relay, device))
    }
}

#[async_trait]
impl Transport for RelayTransport {
    async fn relay_info(&self) -> Result<Option<RelayInfo>, TransportError> {
        let relay = self.relay()?;
        let registration = match relay.config().registration {
            Registration::Open => RegistrationPolicy::Open,
            Registration::Invite => RegistrationPolicy::Invite,
        };
        answer(Some(RelayInfo {
            name: relay.name().clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            registration,
        }))
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, TransportError> {
        let relay = self.relay()?;
        answer(relay.register(request(req)?).await.map_err(api)?)
    }

    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, TransportError> {
        let relay = self.relay()?;
        let req = request(req)?;
        answer(
            relay
                .challenge(&req.username, req.device)
                .await
                .map_err(api)?,
        )
    }

    async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, TransportError> {
        let relay = self.relay()?;
        answer(relay.login(request(req)?).await.map_err(api)?)
    }

    async fn refresh(&self, req: &RefreshRequest) -> Result<TokenResponse, TransportError> {
        let relay = self.relay()?;
        let req = request(req)?;
        answer(relay.refresh(&req.refresh_token).await.map_err(api)?)
    }

    async fn device_list(&self, username: &Username) -> Result<SignedDeviceList, TransportError> {
        let relay = self.relay()?;
        answer(relay.device_list(username).await.map_err(api)?)
    }

    async fn create_link(&self, req: &LinkRequest) -> Result<LinkResponse, TransportError> {
        let relay = self.relay()?;
        answer(relay.open_link(request(req)?).await.map_err(api)?)
    }

    async fn link_status(&self, code: &str, secret: &str) -> Result<LinkStatus, TransportError> {
        let relay = self.relay()?;
        answer(relay.link_status(code, secret).await.map_err(api)?)
    }

    async fn link_info(&self, token: &str, code: &str) -> Result<LinkInfo, TransportError> {
        let (relay, device) = self.authed(token).await?;
        answer(relay.link_info(&device, code).await.map_err(api)?)
    }

    async fn approve_link(
        &self,
        token: &str,
        code: &str,
        req: &ApproveLinkRequest,
    ) -> Result<ApproveLinkResponse, TransportError> {
        let (relay, device) = self.authed(token).await?;
        let req = request(req)?;
        answer(relay.approve_link(&device, code, req).await.map_err(api)?)
    }

    async fn put_signed_prekey(
        &self,
        token: &str,
        key: &SignedPreKey,
    ) -> Result<(), TransportError> {
        let (relay, device) = self.authed(token).await?;
        relay
            .set_signed_prekey(&device, request(key)?)
            .await
            .map_err(api)
    }

    async fn upload_one_time_prekeys(
        &self,
        token: &str,
        req: &UploadOneTimePreKeys,
    ) -> Result<PreKeyCount, TransportError> {
        let (relay, device) = self.authed(token).await?;
        let req = request(req)?;
        answer(
            relay
                .upload_one_time_prekeys(&device, req)
                .await
                .map_err(api)?,
        )
    }

    async fn prekey_count(&self, token: &str) -> Result<PreKeyCount, TransportError> {
        let (relay, device) = self.authed(token).await?;
        answer(relay.prekey_count(&device).await.map_err(api)?)
    }

    async fn key_bundle(
        &self,
        token: &str,
        address: &Address,
        device: Option<DeviceId>,
    ) -> Result<KeyBundleResponse, TransportError> {
        let (relay, me) = self.authed(token).await?;
        let requester = Requester::Account(me.user);
        let bundle = match relay.key_bundle(&requester, address, device).await {
            Err(RelayError::NotLocal) => {
                let federation = InProcessFederation::new(self.net.clone(), self.name.clone());
                fetch_remote_bundle(&federation, address, device)
                    .await
                    .map_err(TransportError::Api)?
            }
            other => other.map_err(api)?,
        };
        answer(bundle)
    }

    async fn send(
        &self,
        token: &str,
        message: &OutgoingMessage,
    ) -> Result<SendResponse, TransportError> {
        let (relay, device) = self.authed(token).await?;
        let accepted = relay
            .accept_message(&device, request(message)?)
            .await
            .map_err(api)?;
        if !accepted.duplicate {
            self.net.record_sent(message);
        }
        self.net.inner().notify.notify_waiters();
        // What the node's drainer would do next: hand remote copies over.
        self.net.drain().await;
        answer(SendResponse {
            id: accepted.id,
            accepted_ms: accepted.accepted_ms,
        })
    }

    async fn fetch(
        &self,
        token: &str,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<FetchResponse, TransportError> {
        let (relay, device) = self.authed(token).await?;
        let limit = limit.unwrap_or(FETCH_LIMIT_DEFAULT);
        let after = after.unwrap_or(0);
        let mut page = if after < INJECTED_SEQ_MIN {
            relay.fetch(&device, after, limit).await.map_err(api)?
        } else {
            FetchResponse {
                envelopes: Vec::new(),
                more: false,
            }
        };
        if !page.more {
            let room = (limit as usize).saturating_sub(page.envelopes.len());
            let (injected, more) = self.net.injected_after(&self.key(&device), after, room);
            page.more = more;
            page.envelopes.extend(injected);
        }
        answer(page)
    }

    async fn ack(&self, token: &str, seqs: &[u64]) -> Result<AckResponse, TransportError> {
        let (relay, device) = self.authed(token).await?;
        let (injected, stored): (Vec<u64>, Vec<u64>) =
            seqs.iter().partition(|&&s| s >= INJECTED_SEQ_MIN);
        let mut response = relay.ack(&device, &stored).await.map_err(api)?;
        response.acked += self.net.ack_injected(&self.key(&device), &injected);
        answer(response)
    }

    async fn subscribe(&self, token: &str) -> Result<Box<dyn Subscription>, TransportError> {
        let (_, device) = self.authed(token).await?;
        Ok(Box::new(RelaySubscription {
            transport: self.clone(),
            token: token.to_owned(),
            low: device.prekeys_low,
            device,
            cursor: 0,
            injected_cursor: 0,
        }))
    }
}

/// A push connection: envelopes in mailbox order as they arrive, like the
/// gateway's WebSocket session (which also says first if prekeys are low).
struct RelaySubscription {
    transport: RelayTransport,
    token: String,
    device: AuthedDevice,
    low: Option<u32>,
    /// Last seq pushed from the relay's store, and from injected envelopes.
    cursor: u64,
    injected_cursor: u64,
}

#[async_trait]
impl Subscription for RelaySubscription {
    async fn next(&mut self) -> Result<Option<ServerFrame>, TransportError> {
        if let Some(remaining) = self.low.take() {
            return Ok(Some(ServerFrame::PrekeysLow { remaining }));
        }
        let net = self.transport.net.clone();
        loop {
            let mut notified = std::pin::pin!(net.inner().notify.notified());
            // Registered before looking, so a change in between still wakes us.
            notified.as_mut().enable();
            let relay = self.transport.relay()?;
            let page = relay
                .fetch(&self.device, self.cursor, 1)
                .await
                .map_err(api)?;
            let next = match page.envelopes.into_iter().next() {
                Some(envelope) => {
                    self.cursor = envelope.seq;
                    Some(envelope)
                }
                None => {
                    let key = self.transport.key(&self.device);
                    let (mut injected, _) = net.injected_after(&key, self.injected_cursor, 1);
                    injected.pop().inspect(|e| self.injected_cursor = e.seq)
                }
            };
            if let Some(envelope) = next {
                return Ok(Some(answer(ServerFrame::Envelope { envelope })?));
            }
            notified.await;
        }
    }

    async fn ack(&mut self, seqs: &[u64]) -> Result<(), TransportError> {
        // The gateway re-checks the token for every ack on an open socket.
        self.transport.ack(&self.token, seqs).await.map(|_| ())
    }
}
