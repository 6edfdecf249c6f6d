//! The OpenAPI document served at `/v1/openapi.json`.
//!
//! Paths come from the handlers' `#[utoipa::path]` attributes; every schema
//! comes from the `courier-protocol` type the handler really decodes or
//! encodes (its `openapi` feature derives `utoipa::ToSchema` next to serde),
//! so there is no second description of the wire format to keep in step.
//! `gateway/tests/openapi.rs` checks the document against the JSON those
//! types produce.

use courier_protocol::api::DeliveryFailureNotice;
use courier_protocol::{ClientFrame, ErrorBody, ServerFrame};
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Courier relay API", description = "Client API of a Courier relay. Binary fields are unpadded base64url; times are Unix milliseconds. Errors are `{\"error\": {\"code\", \"message\"}}`; see docs/api.md. `ServerFrame` and `ClientFrame` are the JSON text frames of `/v1/ws`; `DeliveryFailureNotice` is the JSON body of a `delivery_failure` envelope."),
    modifiers(&BearerAuth),
    // Schemas no path names as a body: every error's body, the WebSocket
    // frames and the body of a relay notice.
    components(schemas(ErrorBody, ServerFrame, ClientFrame, DeliveryFailureNotice)),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The router the `/v1` routes are added to: it starts with the document's
/// info, security scheme and extra schemas.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
}

/// The whole document, as `/v1/openapi.json` serves it.
pub fn document() -> OpenApi {
    let (public, authed) = crate::api_routes();
    router().merge(public).merge(authed).split_for_parts().1
}
