//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `GET /openapi.json`.

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};

/// vendbox's API description.
#[derive(OpenApi, Debug)]
#[openapi(
    info(
        title = "vendbox",
        description = "Self-hosted storefront that sells sandboxes, machines and locks to AI agents, paid per request over HTTP 402 in USDC.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&ReleaseTokenScheme),
    tags(
        (name = "health", description = "Liveness"),
        (name = "catalog", description = "What is for sale and what it costs"),
        (name = "payments", description = "Payments made to this vendbox (x402: 402 challenge, PAYMENT-SIGNATURE or X-PAYMENT, receipt in PAYMENT-RESPONSE or X-PAYMENT-RESPONSE)"),
        (name = "vpsagent", description = "The VpsAgent API, path for path"),
        (name = "h3retik", description = "The H3RETIK Cloud API, path for path"),
        (name = "storefront", description = "The Agentic Compute Storefront API, path for path (paid over x402)"),
        (name = "locks", description = "Agent Lock, native: TTL locks with fencing tokens; the release token is a bearer"),
        (name = "boxes", description = "Boxes, native: buy one, run commands (one action each), move files, end it; the box's token is a bearer"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer schemes: `release_token` (native locks) and `lease_token` (boxes).
#[derive(Debug)]
struct ReleaseTokenScheme;

impl utoipa::Modify for ReleaseTokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("The `release_token` an acquisition returned".into());
        components.add_security_scheme("release_token", SecurityScheme::Http(scheme));
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description =
            Some("The `token` (native) or `session_token` (H3RETIK) a box purchase returned".into());
        components.add_security_scheme("lease_token", SecurityScheme::Http(scheme));
    }
}

/// The document as clients read it: the operations `app::operations` routes, with vendbox's
/// version.
pub fn document() -> utoipa::openapi::OpenApi {
    versioned(crate::app::operations(crate::Limits::default()).split_for_parts().1)
}

/// `doc` with vendbox's version.
pub(crate) fn versioned(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    env!("CARGO_PKG_VERSION").clone_into(&mut doc.info.version);
    doc
}

/// `GET /openapi.json`: the document, serialised once at start-up.
pub(crate) fn serve(document: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document)
}
