//! How the SDK talks to its home relay, as a trait: the HTTP + WebSocket
//! implementation (`HttpTransport`, feature `http`) for real relays.
//! Tests and simulations bring their own over in-process relays
//! (`courier-testkit`), so real client crypto meets the real relay logic
//! without sockets.
//!
//! Authenticated calls take the access token; getting and refreshing it is
//! the SDK's job (see `Client`), not the transport's.

#[cfg(feature = "http")]
mod http;

#[cfg(feature = "http")]
pub use http::HttpTransport;

use async_trait::async_trait;
use courier_protocol::api::{
    AckResponse, ApproveLinkRequest, ApproveLinkResponse, ChallengeRequest, ChallengeResponse,
    FetchResponse, KeyBundleResponse, LinkInfo, LinkRequest, LinkResponse, LinkStatus,
    LoginRequest, PreKeyCount, RefreshRequest, RegisterRequest, RegisterResponse, SendResponse,
    SignedDeviceList, SignedPreKey, TokenResponse, UploadOneTimePreKeys,
};
use courier_protocol::ws::{ClientFrame, ServerFrame};
use courier_protocol::{Address, ApiError, DeviceId, OutgoingMessage, Username};

/// Why a transport call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The relay answered with an error body.
    #[error("{0}")]
    Api(ApiError),
    /// The relay could not be reached (connection refused, timeout, closed).
    #[error("{0}")]
    Unreachable(String),
    /// The relay answered with something that does not decode.
    #[error("{0}")]
    BadResponse(String),
}

/// A live push connection (the WebSocket): envelopes and notices in, acks out.
#[async_trait]
pub trait Subscription: Send {
    /// The next frame; `Ok(None)` when the relay closed the connection.
    async fn next(&mut self) -> Result<Option<ServerFrame>, TransportError>;
    /// Acknowledges envelopes by mailbox sequence number.
    async fn ack(&mut self, seqs: &[u64]) -> Result<(), TransportError>;
    /// Sends `frames` in order with one write: acks, and `send` frames that
    /// the relay answers with a `sent` or `refused` frame echoing their
    /// `request`, so a sender can keep several messages in flight on one
    /// connection (`docs/protocol.md`, WebSocket).
    ///
    /// The default carries acks only and refuses `send` frames with
    /// [`TransportError::BadResponse`], for transports whose push
    /// connection has no upstream (the in-process ones).
    async fn send(&mut self, frames: &[ClientFrame]) -> Result<(), TransportError> {
        for frame in frames {
            match frame {
                ClientFrame::Ack { seqs } => self.ack(seqs).await?,
                ClientFrame::Send { .. } => {
                    return Err(TransportError::BadResponse(
                        "this transport sends messages over its requests only".into(),
                    ));
                }
            }
        }
        Ok(())
    }
    /// Closes the connection, telling the relay (a WebSocket close frame)
    /// rather than dropping it. The default does nothing: dropping the
    /// subscription is its close.
    async fn close(&mut self) {}
}

/// The client API of a home relay (`docs/protocol.md`).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// `GET /v1/relay`: the relay's name (as it appears in its users'
    /// addresses), version and registration policy. `Ok(None)` when the
    /// relay predates the endpoint (it answers `not_found`).
    async fn relay_info(&self) -> Result<Option<courier_protocol::api::RelayInfo>, TransportError>;
    /// `POST /v1/accounts`.
    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, TransportError>;
    /// `POST /v1/auth/challenge`.
    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, TransportError>;
    /// `POST /v1/auth/login`.
    async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, TransportError>;
    /// `POST /v1/auth/refresh`.
    async fn refresh(&self, req: &RefreshRequest) -> Result<TokenResponse, TransportError>;
    /// `GET /v1/devices/{username}` (a user of this relay).
    async fn device_list(&self, username: &Username) -> Result<SignedDeviceList, TransportError>;
    /// `POST /v1/links`.
    async fn create_link(&self, req: &LinkRequest) -> Result<LinkResponse, TransportError>;
    /// `GET /v1/links/{code}/status?secret=`.
    async fn link_status(&self, code: &str, secret: &str) -> Result<LinkStatus, TransportError>;
    /// `GET /v1/links/{code}` (auth).
    async fn link_info(&self, token: &str, code: &str) -> Result<LinkInfo, TransportError>;
    /// `POST /v1/links/{code}/approve` (auth).
    async fn approve_link(
        &self,
        token: &str,
        code: &str,
        req: &ApproveLinkRequest,
    ) -> Result<ApproveLinkResponse, TransportError>;
    /// `PUT /v1/keys/signed-prekey` (auth).
    async fn put_signed_prekey(
        &self,
        token: &str,
        key: &SignedPreKey,
    ) -> Result<(), TransportError>;
    /// `POST /v1/keys/one-time` (auth).
    async fn upload_one_time_prekeys(
        &self,
        token: &str,
        req: &UploadOneTimePreKeys,
    ) -> Result<PreKeyCount, TransportError>;
    /// `GET /v1/keys/count` (auth).
    async fn prekey_count(&self, token: &str) -> Result<PreKeyCount, TransportError>;
    /// `GET /v1/keys/{address}?device=` (auth): local or over federation.
    async fn key_bundle(
        &self,
        token: &str,
        address: &Address,
        device: Option<DeviceId>,
    ) -> Result<KeyBundleResponse, TransportError>;
    /// `POST /v1/messages` (auth): returns once the relay stored the message.
    async fn send(
        &self,
        token: &str,
        message: &OutgoingMessage,
    ) -> Result<SendResponse, TransportError>;
    /// `GET /v1/messages?after=&limit=` (auth).
    async fn fetch(
        &self,
        token: &str,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<FetchResponse, TransportError>;
    /// `POST /v1/messages/ack` (auth).
    async fn ack(&self, token: &str, seqs: &[u64]) -> Result<AckResponse, TransportError>;
    /// Opens the push connection (`/v1/ws`).
    async fn subscribe(&self, token: &str) -> Result<Box<dyn Subscription>, TransportError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A push connection that only records acks: the default `send`.
    struct Acks(Vec<Vec<u64>>);

    #[async_trait]
    impl Subscription for Acks {
        async fn next(&mut self) -> Result<Option<ServerFrame>, TransportError> {
            Ok(None)
        }
        async fn ack(&mut self, seqs: &[u64]) -> Result<(), TransportError> {
            self.0.push(seqs.to_vec());
            Ok(())
        }
    }

    #[tokio::test]
    async fn default_send_carries_acks_in_order_and_refuses_send_frames() {
        let mut sub = Acks(Vec::new());
        let acks = [
            ClientFrame::Ack { seqs: vec![1, 2] },
            ClientFrame::Ack { seqs: vec![3] },
        ];
        sub.send(&acks).await.unwrap();
        assert_eq!(sub.0, [vec![1, 2], vec![3]]);

        let message = crate::wire::outgoing(
            courier_protocol::EnvelopeId::new(1, [1; 10]),
            vec![1],
            std::iter::empty(),
            60,
        );
        let send = [ClientFrame::Send {
            request: 1,
            message,
        }];
        let err = sub.send(&send).await.unwrap_err();
        assert!(matches!(err, TransportError::BadResponse(_)), "{err:?}");
        assert_eq!(sub.0.len(), 2, "nothing more was acked");
    }
}
