//! Cross-cutting request handling: request ids, spans and access logs,
//! metrics, per-IP rate limits, timeouts and JSON 404/405s.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use courier_protocol::ErrorCode;
use tracing::Instrument;

use crate::error::Error;
use crate::state::AppState;

/// The header carrying the request id, in both directions.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn request_id(req: &Request) -> HeaderValue {
    // A caller-supplied id is kept (so a trace spans proxies) if it is short
    // and printable; anything else is replaced.
    if let Some(v) = req.headers().get(&REQUEST_ID)
        && v.len() <= 64
        && !v.is_empty()
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let boot = *BOOT_ID;
    HeaderValue::from_str(&format!("{boot:08x}-{n:x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

// Distinguishes the ids of two runs of the relay.
static BOOT_ID: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0)
});

/// The client IP of a request: the TCP peer, or, if that is one of
/// `proxies`, the client their forwarding headers name (see `client_ip.rs`).
pub fn client_ip(req: &Request, proxies: &crate::client_ip::Proxies) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| proxies.client(addr.ip(), req.headers()))
}

/// A request target or head over its limit: 414 `uri_too_long` or 431
/// `headers_too_large`, with the JSON body every error has. (hyper itself
/// only stops heads far larger, see `listener.rs`.)
fn oversized(req: &Request, http: &crate::config::HttpConfig) -> Option<Error> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > http.uri_bytes_max {
        return Some(Error::with_message(
            ErrorCode::UriTooLong,
            format!(
                "the request target is longer than {} bytes",
                http.uri_bytes_max
            ),
        ));
    }
    // As on the wire: "name: value\r\n" per header.
    let head: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if head > http.header_bytes_max {
        return Some(Error::with_message(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request headers are larger than {} bytes",
                http.header_bytes_max
            ),
        ));
    }
    None
}

/// Request id, span, access log, metrics, per-IP rate limit and timeout,
/// in that order.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let ip = client_ip(&req, &state.proxies);
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or(""),
        method = %method,
        route = %route,
        user = tracing::field::Empty,
    );

    let mut response = async {
        if let Some(error) = oversized(&req, &state.config.http) {
            return error.into_response();
        }
        if let Some(ip) = ip
            && let Err(wait) = state
                .ip_limiter
                .check(&crate::client_ip::limit_key(ip), Instant::now())
        {
            return Error::rate_limited(wait).into_response();
        }
        match tokio::time::timeout(state.request_timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!("request timed out");
                Error::with_message(ErrorCode::Unavailable, "the request timed out").into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(status, latency_us = elapsed.as_micros() as u64, "handled");
    });
    let labels = [
        ("route", route),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!(crate::metrics::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
}

/// JSON 404 for unknown paths.
pub async fn not_found() -> Error {
    Error::with_message(ErrorCode::NotFound, "no such endpoint")
}

/// JSON 405 bodies: axum answers wrong methods with an empty 405.
pub async fn json_method_not_allowed(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED
        && response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none()
    {
        let mut error =
            Error::with_message(ErrorCode::BadRequest, "method not allowed").into_response();
        *error.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
        if let Some(allow) = response.headers().get(axum::http::header::ALLOW) {
            error
                .headers_mut()
                .insert(axum::http::header::ALLOW, allow.clone());
        }
        return error;
    }
    response
}
