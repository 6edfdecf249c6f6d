//! The `/v1` HTTP handlers. Each is a thin translation: decode, call the
//! relay, encode; the relay holds every rule. Their `#[utoipa::path]`
//! attributes generate `/v1/openapi.json`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use courier_protocol::validate::Validate as _;
use courier_protocol::{Address, ErrorBody, ErrorCode, OutgoingMessage, Username};
use courier_relay::AuthedDevice;

use crate::error::{Error, Result};
use crate::extract::{Authed, Json, Query};
use crate::state::AppState;
use crate::wire::*;

/// Envelopes per fetch when the client names no `limit`.
const FETCH_LIMIT_DEFAULT: u32 = 100;

fn relay_error(e: courier_relay::RelayError) -> Error {
    match &e {
        courier_relay::RelayError::Store(detail) => tracing::error!(%detail, "store failure"),
        courier_relay::RelayError::StorageFull(detail) => {
            tracing::error!(%detail, "storage full: writes are refused until space is freed")
        }
        _ => {}
    }
    Error::from(e.to_api_error())
}

/// Public facts about this relay: its name (the part after `@` of its
/// users' addresses), software version and registration policy.
#[utoipa::path(get, path = "/v1/relay", tag = "relay",
    responses((status = 200, description = "`RelayInfo`", body = RelayInfo)))]
pub async fn relay_info(State(state): State<AppState>) -> axum::Json<RelayInfo> {
    let registration = match state.relay.config().registration {
        courier_relay::Registration::Open => RegistrationPolicy::Open,
        courier_relay::Registration::Invite => RegistrationPolicy::Invite,
    };
    axum::Json(RelayInfo {
        name: state.relay.name().clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        registration,
    })
}

/// Creates an account and its first device.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts",
    request_body(content = RegisterRequest, description = "`RegisterRequest`"),
    responses(
        (status = 201, description = "`RegisterResponse`", body = RegisterResponse),
        (status = 400, description = "`malformed`, `bad_request`, `invalid_signature`, `invalid_address`, `weak_key`", body = ErrorBody),
        (status = 403, description = "`invite_required`, `invalid_invite` (checked before the username)", body = ErrorBody),
        (status = 409, description = "`username_taken`", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Json(request): Json<RegisterRequest>,
) -> Result<impl IntoResponse> {
    let response = state.relay.register(request).await.map_err(relay_error)?;
    Ok((StatusCode::CREATED, axum::Json(response)))
}

/// Asks for a login challenge for a device.
#[utoipa::path(post, path = "/v1/auth/challenge", tag = "auth",
    request_body(content = ChallengeRequest, description = "`ChallengeRequest`"),
    responses(
        (status = 200, description = "`ChallengeResponse`", body = ChallengeResponse),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ))]
pub async fn challenge(
    State(state): State<AppState>,
    Json(request): Json<ChallengeRequest>,
) -> Result<axum::Json<ChallengeResponse>> {
    let response = state
        .relay
        .challenge(&request.username, request.device)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(response))
}

/// Answers a challenge with the device's signature; returns tokens.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth",
    request_body(content = LoginRequest, description = "`LoginRequest`"),
    responses(
        (status = 200, description = "`TokenResponse`", body = TokenResponse),
        (status = 400, description = "`invalid_signature`", body = ErrorBody),
        (status = 401, description = "`invalid_challenge` (unknown, expired or already used)", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    Json(request): Json<LoginRequest>,
) -> Result<axum::Json<TokenResponse>> {
    let response = state.relay.login(request).await.map_err(relay_error)?;
    Ok(axum::Json(response))
}

/// Rotates the refresh token; reusing an old one revokes the login session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth",
    request_body(content = RefreshRequest, description = "`RefreshRequest`"),
    responses(
        (status = 200, description = "`TokenResponse`", body = TokenResponse),
        (status = 401, description = "`invalid_refresh_token`", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<axum::Json<TokenResponse>> {
    let response = state
        .relay
        .refresh(&request.refresh_token)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(response))
}

/// Ends this device's login session: its tokens stop working at once.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses((status = 204, description = "logged out"),
        (status = 401, description = "`unauthenticated`, `token_expired`", body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, Authed(device): Authed) -> Result<StatusCode> {
    state.relay.logout(&device).await.map_err(relay_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed device list of a local account.
#[utoipa::path(get, path = "/v1/devices/{username}", tag = "devices",
    params(("username" = Username, Path, description = "a local username")),
    responses(
        (status = 200, description = "`SignedDeviceList`", body = SignedDeviceList),
        (status = 404, description = "`unknown_user`", body = ErrorBody),
    ))]
pub async fn device_list(
    State(state): State<AppState>,
    Path(username): Path<String>,
) -> Result<axum::Json<SignedDeviceList>> {
    let username = Username::parse(&username)
        .map_err(|e| Error::with_message(ErrorCode::InvalidAddress, e.to_string()))?;
    let list = state
        .relay
        .device_list(&username)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(list))
}

/// A new device asks to join an account; an existing device approves it.
#[utoipa::path(post, path = "/v1/links", tag = "devices",
    request_body(content = LinkRequest, description = "`LinkRequest`"),
    responses(
        (status = 201, description = "`LinkResponse`", body = LinkResponse),
        (status = 400, description = "`invalid_signature`, `weak_key`", body = ErrorBody),
        (status = 404, description = "`unknown_user`", body = ErrorBody),
    ))]
pub async fn open_link(
    State(state): State<AppState>,
    Json(request): Json<LinkRequest>,
) -> Result<impl IntoResponse> {
    let response = state.relay.open_link(request).await.map_err(relay_error)?;
    Ok((StatusCode::CREATED, axum::Json(response)))
}

/// What a pending link asks for (only for devices of that account).
#[utoipa::path(get, path = "/v1/links/{code}", tag = "devices",
    security(("bearer" = [])),
    params(("code" = String, Path, description = "the link code")),
    responses(
        (status = 200, description = "`LinkInfo`", body = LinkInfo),
        (status = 404, description = "`invalid_link_code`", body = ErrorBody),
    ))]
pub async fn link_info(
    State(state): State<AppState>,
    Authed(device): Authed,
    Path(code): Path<String>,
) -> Result<axum::Json<LinkInfo>> {
    let info = state
        .relay
        .link_info(&device, &code)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(info))
}

/// Approves a pending link with the new signed device list.
#[utoipa::path(post, path = "/v1/links/{code}/approve", tag = "devices",
    security(("bearer" = [])),
    params(("code" = String, Path, description = "the link code")),
    request_body(content = ApproveLinkRequest, description = "`ApproveLinkRequest`"),
    responses(
        (status = 200, description = "`ApproveLinkResponse`", body = ApproveLinkResponse),
        (status = 400, description = "`invalid_signature`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`invalid_link_code`", body = ErrorBody),
        (status = 409, description = "`too_many_devices`, `conflict`", body = ErrorBody),
    ))]
pub async fn approve_link(
    State(state): State<AppState>,
    Authed(device): Authed,
    Path(code): Path<String>,
    Json(request): Json<ApproveLinkRequest>,
) -> Result<axum::Json<ApproveLinkResponse>> {
    let response = state
        .relay
        .approve_link(&device, &code, request)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(response))
}

/// Polled by the new device until its link is approved.
#[utoipa::path(get, path = "/v1/links/{code}/status", tag = "devices",
    params(("code" = String, Path, description = "the link code"), LinkStatusQuery),
    responses(
        (status = 200, description = "`LinkStatus`", body = LinkStatus),
        (status = 404, description = "`invalid_link_code` (or wrong secret)", body = ErrorBody),
    ))]
pub async fn link_status(
    State(state): State<AppState>,
    Path(code): Path<String>,
    Query(query): Query<LinkStatusQuery>,
) -> Result<axum::Json<LinkStatus>> {
    query.validate().map_err(Error::code)?;
    let status = state
        .relay
        .link_status(&code, &query.secret)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(status))
}

/// Replaces this device's signed prekey.
#[utoipa::path(put, path = "/v1/keys/signed-prekey", tag = "keys",
    security(("bearer" = [])),
    request_body(content = SignedPreKey, description = "`SignedPreKey`"),
    responses((status = 204, description = "stored"),
        (status = 400, description = "`invalid_signature`, `weak_key`", body = ErrorBody)))]
pub async fn put_signed_prekey(
    State(state): State<AppState>,
    Authed(device): Authed,
    Json(prekey): Json<SignedPreKey>,
) -> Result<StatusCode> {
    state
        .relay
        .set_signed_prekey(&device, prekey)
        .await
        .map_err(relay_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds one-time prekeys to this device's pool.
#[utoipa::path(post, path = "/v1/keys/one-time", tag = "keys",
    security(("bearer" = [])),
    request_body(content = UploadOneTimePreKeys, description = "`UploadOneTimePreKeys`"),
    responses((status = 200, description = "`PreKeyCount`", body = PreKeyCount),
        (status = 400, description = "`weak_key`", body = ErrorBody),
        (status = 409, description = "`too_many_prekeys`", body = ErrorBody)))]
pub async fn upload_one_time(
    State(state): State<AppState>,
    Authed(device): Authed,
    Json(upload): Json<UploadOneTimePreKeys>,
) -> Result<axum::Json<PreKeyCount>> {
    let count = state
        .relay
        .upload_one_time_prekeys(&device, upload)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(count))
}

/// How many one-time prekeys this device has left.
#[utoipa::path(get, path = "/v1/keys/count", tag = "keys",
    security(("bearer" = [])),
    responses((status = 200, description = "`PreKeyCount`", body = PreKeyCount)))]
pub async fn prekey_count(
    State(state): State<AppState>,
    Authed(device): Authed,
) -> Result<axum::Json<PreKeyCount>> {
    let count = state
        .relay
        .prekey_count(&device)
        .await
        .map_err(relay_error)?;
    Ok(axum::Json(count))
}

/// Prekey bundles of an address's devices (each one-time prekey is handed
/// out once, within the requester's and the device's budgets; past them a
/// bundle has the signed prekey only).
#[utoipa::path(get, path = "/v1/keys/{address}", tag = "keys",
    security(("bearer" = [])),
    params(("address" = Address, Path, description = "`user@relay`"), KeyBundleQuery),
    responses(
        (status = 200, description = "`KeyBundleResponse`", body = KeyBundleResponse),
        (status = 400, description = "`invalid_address`", body = ErrorBody),
        (status = 404, description = "`unknown_user`, `unknown_device`, `unknown_relay`", body = ErrorBody),
    ))]
pub async fn key_bundle(
    State(state): State<AppState>,
    Authed(device): Authed,
    Path(address): Path<String>,
    Query(query): Query<KeyBundleQuery>,
) -> Result<axum::Json<KeyBundleResponse>> {
    let address = Address::parse(&address)
        .map_err(|e| Error::with_message(ErrorCode::InvalidAddress, e.to_string()))?;
    let requester = courier_relay::Requester::Account(device.user);
    let bundle = match state
        .relay
        .key_bundle(&requester, &address, query.device)
        .await
    {
        Err(courier_relay::RelayError::NotLocal) => {
            let Some(federation) = &state.federation else {
                return Err(Error::code(ErrorCode::UnknownRelay));
            };
            let relay = address.relay.clone();
            let request = courier_protocol::federation::BundleRequest {
                address,
                device: query.device,
            };
            match federation.fetch_bundle(&relay, request).await {
                Ok(Ok(bundle)) => bundle,
                Ok(Err(remote_error)) => return Err(remote_error.into()),
                Err(e) => return Err(Error::with_message(e.code(), e.to_string())),
            }
        }
        other => other.map_err(relay_error)?,
    };
    Ok(axum::Json(bundle))
}

/// Sends one message to many devices; answers once it is durable.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    security(("bearer" = [])),
    request_body(content = OutgoingMessage, description = "`OutgoingMessage`"),
    responses(
        (status = 201, description = "`SendResponse`: stored", body = SendResponse),
        (status = 400, description = "`bad_request`, `malformed`", body = ErrorBody),
        (status = 404, description = "`unknown_user`, `unknown_device`, `unknown_relay`", body = ErrorBody),
        (status = 409, description = "`conflict`: this sender used the id for another message", body = ErrorBody),
        (status = 413, description = "`payload_too_large`, `too_many_recipients`", body = ErrorBody),
        (status = 507, description = "`mailbox_full`; `mailbox_quota`: a recipient mailbox holds as much from this sender as one source may", body = ErrorBody),
    ))]
pub async fn send(
    State(state): State<AppState>,
    Authed(device): Authed,
    Json(message): Json<OutgoingMessage>,
) -> Result<impl IntoResponse> {
    let (response, duplicate) = send_message(&state, &device, message).await?;
    // A retry of an accepted message is a 200 with the first answer.
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(response)))
}

/// Stores a message from `device` (HTTP and WebSocket sends share this);
/// true if it was a retry of one already stored.
pub async fn send_message(
    state: &AppState,
    device: &AuthedDevice,
    message: OutgoingMessage,
) -> Result<(SendResponse, bool)> {
    let accepted = state
        .relay
        .accept_message(device, message)
        .await
        .map_err(relay_error)?;
    if !accepted.duplicate {
        metrics::counter!(crate::metrics::MESSAGES_ACCEPTED).increment(1);
    }
    let response = SendResponse {
        id: accepted.id,
        accepted_ms: accepted.accepted_ms,
    };
    Ok((response, accepted.duplicate))
}

/// Envelopes waiting in this device's mailbox, oldest first.
#[utoipa::path(get, path = "/v1/messages", tag = "messages",
    security(("bearer" = [])),
    params(FetchQuery),
    responses((status = 200, description = "`FetchResponse`", body = FetchResponse)))]
pub async fn fetch(
    State(state): State<AppState>,
    Authed(device): Authed,
    Query(query): Query<FetchQuery>,
) -> Result<axum::Json<FetchResponse>> {
    query.validate().map_err(Error::code)?;
    let response = state
        .relay
        .fetch(
            &device,
            query.after.unwrap_or(0),
            query.limit.unwrap_or(FETCH_LIMIT_DEFAULT),
        )
        .await
        .map_err(relay_error)?;
    metrics::counter!(crate::metrics::ENVELOPES_DELIVERED)
        .increment(response.envelopes.len() as u64);
    Ok(axum::Json(response))
}

/// Deletes delivered envelopes from this device's mailbox.
#[utoipa::path(post, path = "/v1/messages/ack", tag = "messages",
    security(("bearer" = [])),
    request_body(content = AckRequest, description = "`AckRequest`"),
    responses((status = 200, description = "`AckResponse`", body = AckResponse)))]
pub async fn ack(
    State(state): State<AppState>,
    Authed(device): Authed,
    Json(request): Json<AckRequest>,
) -> Result<axum::Json<AckResponse>> {
    let acked = crate::ws::ack(&state, &device, &request).await?;
    Ok(axum::Json(AckResponse { acked }))
}
