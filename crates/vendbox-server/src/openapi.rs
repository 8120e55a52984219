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
        description = "Self-hosted storefront that sells sandboxes, machines and locks to AI agents, paid per request over HTTP 402 in USDC (x402, MPP) or from prepaid credits. Use the native API: `GET /v1/offers` (what is sold), `POST /v1/boxes` (buy a box or machine), `/v1/boxes/{id}/exec` and `/files` (use it), `POST /v1/locks/{key}` (a lock), `/v1/account` (credits). Tags marked `x-vendbox-surface: seed` are other services' APIs served path for path for their existing clients. `GET /` and `/llms.txt` say the same in short; `/mcp` serves the same operations as MCP tools.",
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
        (name = "x402compute", description = "The x402Compute API, path for path. Management takes a wallet signature: X-Auth-Address, X-Auth-Chain (`base`), X-Auth-Signature (EIP-191 personal_sign, 65 bytes hex) over the six lines `vendbox-auth-v1`, METHOD, path with query, X-Auth-Timestamp (Unix ms, within the window), X-Auth-Nonce (single use), and the body's SHA-256 in lowercase hex, joined by \\n; or an API key in X-API-Key"),
        (name = "account", description = "Prepaid credits: top up with x402 (POST /v1/account/topup), then any paid route accepts the wallet's signature (X-Auth-*) or its API key (X-API-Key, Authorization: Bearer vbk_...) instead of an x402 payment. The price is held, and charged only once the work succeeded; the receipt is the Vendbox-Receipt header ({\"method\":\"credits\",\"reference\":ledger entry id}). A 402 names credits in Vendbox-Credits; a short balance is refused with insufficient_credits and what is missing; a key's scope and caps with key_scope, key_daily_cap, key_total_cap. With both an x402 payment and an account, x402 pays"),
        (name = "e2b", description = "E2B's control plane, for the stock `e2b` SDKs: set E2B_API_URL and E2B_SANDBOX_URL to this vendbox and E2B_API_KEY to a vendbox API key whose credits pay (the sandbox's timeout, by the minute). Templates are the `e2b` offer's images (`base` is its default). envd, the in-sandbox API, is served at the same URL to requests with an `E2b-Sandbox-Id` header (Connect RPC, JSON codec: process.Process, filesystem.Filesystem; /files, /health)"),
        (name = "locks", description = "Agent Lock, native: TTL locks with fencing tokens; the release token is a bearer"),
        (name = "boxes", description = "Boxes, native: buy one, run commands (one action each), move files, end it; the box's token is a bearer"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer schemes: `release_token` (native locks) and `lease_token` (boxes).
#[derive(Debug)]
struct ReleaseTokenScheme;

/// The tags of the seed-compatible surfaces: the APIs vendbox serves path for path so that
/// their clients work unchanged. A new integration uses the native API.
pub const SEED_TAGS: [&str; 5] = ["vpsagent", "h3retik", "storefront", "x402compute", "secretvm"];

/// Marks each tag `x-vendbox-surface: seed` (with a sentence saying so) or `native`.
fn mark_surfaces(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    for tag in doc.tags.iter_mut().flatten() {
        let seed = SEED_TAGS.contains(&tag.name.as_str());
        let surface = if seed { "seed" } else { "native" };
        let extensions = ExtensionsBuilder::new().add("x-vendbox-surface", surface).build();
        match &mut tag.extensions {
            Some(existing) => existing.merge(extensions),
            None => tag.extensions = Some(extensions),
        }
        if seed {
            let said = tag.description.take().unwrap_or_default();
            tag.description = Some(format!(
                "Seed-compatible surface, for that API's existing clients: {said}. New integrations use the native API (`catalog`, `boxes`, `locks`, `account`)."
            ));
        }
    }
}

impl utoipa::Modify for ReleaseTokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        mark_surfaces(doc);
        let components = doc.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("The `release_token` an acquisition returned".into());
        components.add_security_scheme("release_token", SecurityScheme::Http(scheme));
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description =
            Some("The `token` (native) or `session_token` (H3RETIK) a box purchase returned".into());
        components.add_security_scheme("lease_token", SecurityScheme::Http(scheme));
        let mut key = utoipa::openapi::security::ApiKeyValue::new("X-API-Key");
        key.description = Some("An API key (`vbk_…`) made by `POST /compute/api-keys`; also taken as `Authorization: Bearer vbk_…`".into());
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(key)),
        );
        let mut signature = utoipa::openapi::security::ApiKeyValue::new("X-Auth-Signature");
        signature.description = Some("A wallet's EIP-191 signature of the request, with X-Auth-Address, X-Auth-Chain (`base`), X-Auth-Timestamp (Unix ms), X-Auth-Nonce and X-Auth-Sig-Encoding (`hex`). The signed text is six lines joined by `\\n`: `vendbox-auth-v1`, the method, the path with its query, the timestamp, the nonce, and the SHA-256 of the body in lowercase hex. The timestamp must be within the server's window (5 minutes by default) and the nonce is single-use.".into());
        components.add_security_scheme(
            "wallet_signature",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(signature)),
        );
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
