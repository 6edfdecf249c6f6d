//! Extractors whose failures are JSON errors with stable codes, and the
//! authentication layer.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use courier_protocol::ErrorCode;
use courier_relay::AuthedDevice;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::state::AppState;

/// A JSON body; decoding failures are `malformed` (400) and oversized
/// bodies `payload_too_large` (413).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(value))
    }
}

/// A query string; decoding failures are `malformed` (400).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// The authenticated device of a request behind [`require_auth`].
#[derive(Debug, Clone)]
pub struct Authed(pub AuthedDevice);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<AuthedDevice>()
            .cloned()
            .map(Authed)
            .ok_or_else(|| Error::code(ErrorCode::Unauthenticated))
    }
}

/// The access token a request authenticated with (a request extension set
/// by [`require_auth`]): a WebSocket re-checks it for every message it
/// sends, so a logout or an expiry also stops sends on an open connection.
#[derive(Debug, Clone)]
pub struct AccessToken(pub String);

/// The access token of a request: `Authorization: Bearer …`, or for
/// browsers' WebSockets (which cannot set headers) the subprotocol
/// `courier.token.<token>`, or `?access_token=…` on `/v1/ws` only.
fn access_token(req: &Request) -> Result<Option<String>, Error> {
    let query_token = req.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "access_token").then(|| v.to_owned())
        })
    });
    // A token in a URL ends up in proxy and access logs, browser history
    // and Referer headers; only the WebSocket upgrade needs it (browsers
    // cannot set headers there). Refused elsewhere even next to a header,
    // so a client that leaks it learns at once.
    if query_token.is_some() && req.uri().path() != courier_protocol::api::paths::WS {
        return Err(Error::with_message(
            ErrorCode::Unauthenticated,
            "access tokens in the query string are accepted only on /v1/ws; \
             send Authorization: Bearer",
        ));
    }
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let Some((scheme, token)) = value.to_str().ok().and_then(|t| t.split_once(' ')) else {
            return Ok(None);
        };
        return Ok(scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned()));
    }
    if let Some(token) = subprotocol_token(req) {
        return Ok(Some(token));
    }
    Ok(query_token)
}

/// Prefix of the WebSocket subprotocol that carries an access token:
/// browsers cannot set headers on a WebSocket, and a token in the URL ends
/// up in logs and histories, so they offer `courier.v1,
/// courier.token.<token>` in `Sec-WebSocket-Protocol` instead (the relay
/// echoes only `courier.v1`).
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "courier.token.";

/// The access token offered as a `courier.token.<token>` subprotocol.
fn subprotocol_token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}

/// Authenticates the request, applies the per-account rate limit, and adds
/// `Courier-Prekeys-Low` to the response when the device's one-time prekey
/// pool is low.
pub async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = match access_token(&req) {
        Ok(Some(token)) => token,
        Ok(None) => {
            return Error::with_message(ErrorCode::Unauthenticated, "missing bearer access token")
                .into_response();
        }
        Err(refused) => return refused.into_response(),
    };
    let device = match state.relay.authenticate(&token).await {
        Ok(device) => device,
        Err(e) => return Error::from(e.to_api_error()).into_response(),
    };
    if let Err(wait) = state
        .account_limiter
        .check(&device.user, std::time::Instant::now())
    {
        return Error::rate_limited(wait).into_response();
    }
    let low = device.prekeys_low;
    tracing::Span::current().record("user", device.user.as_str());
    req.extensions_mut().insert(device);
    req.extensions_mut().insert(AccessToken(token));
    let mut response = next.run(req).await;
    if let Some(remaining) = low {
        response.headers_mut().insert(
            courier_protocol::api::PREKEYS_LOW_HEADER,
            HeaderValue::from(remaining),
        );
    }
    response
}
