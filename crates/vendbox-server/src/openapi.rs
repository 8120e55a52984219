//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `GET /openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{health, offers, payments, quotes, vpsagent};

/// vendbox's API description.
#[derive(OpenApi, Debug)]
#[openapi(
    info(
        title = "vendbox",
        description = "Self-hosted storefront that sells sandboxes, machines and locks to AI agents, paid per request over HTTP 402 in USDC.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health::healthz,
        offers::list,
        offers::get,
        quotes::create,
        quotes::get,
        payments::get,
        vpsagent::catalog
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "health", description = "Liveness"),
        (name = "catalog", description = "What is for sale and what it costs"),
        (name = "payments", description = "Payments made to this vendbox (x402: 402 challenge, PAYMENT-SIGNATURE or X-PAYMENT, receipt in PAYMENT-RESPONSE or X-PAYMENT-RESPONSE)"),
        (name = "vpsagent", description = "The VpsAgent API, path for path"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    env!("CARGO_PKG_VERSION").clone_into(&mut doc.info.version);
    doc
}

pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
