//! One obvious way in: `GET /` answers a short JSON index (what is sold, the native path for
//! each job, where the documents are) and `GET /llms.txt` says in one page how an agent buys and
//! uses a box, a machine and a lock here.

use axum::Json;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use vendbox_core::{Catalog, OfferKind};
use vendbox_service::LiveCatalog;

/// `GET /` and `GET /llms.txt` for `catalog` as it is when asked.
pub fn route(catalog: LiveCatalog, ssh: bool) -> Router {
    Router::new().route("/", get(move || std::future::ready(Json(index(&catalog.now(), ssh))))).route(
        "/llms.txt",
        get(|| {
            std::future::ready(
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], LLMS_TXT).into_response(),
            )
        }),
    )
}

/// How many offers of `kind` are for sale.
fn count(catalog: &Catalog, kind: OfferKind) -> usize {
    catalog.offers.iter().filter(|o| o.kind == kind && o.available).count()
}

/// The index.
fn index(catalog: &Catalog, ssh: bool) -> Value {
    json!({
        "name": "vendbox",
        "version": env!("CARGO_PKG_VERSION"),
        "what": "Disposable compute and locks for AI agents, paid per purchase in USDC: x402 or MPP from a wallet, or prepaid credits with an API key.",
        "sells": {
            "sandbox": { "offers": count(catalog, OfferKind::Sandbox), "is": "a Linux box to run commands in, for minutes" },
            "machine": { "offers": count(catalog, OfferKind::Machine), "is": "a Linux box you reach over SSH, for hours to months", "ssh": ssh },
            "lock": { "offers": count(catalog, OfferKind::Lock), "is": "a TTL lock with a fencing token, so only one agent does a thing" },
        },
        "start_here": {
            "see_offers": "GET /v1/offers (each offer's `includes` says what you get; `price_usdc` what it costs)",
            "price_a_purchase": "POST /v1/quotes {\"offer_id\",\"minutes\",\"actions\"}",
            "buy_a_box_or_machine": "POST /v1/boxes {\"offer\",\"minutes\",\"actions\",\"ssh_public_key\"} → 402 → pay → 201 {id, token}",
            "run_a_command": "POST /v1/boxes/{id}/exec {\"command\"} with Authorization: Bearer <token> (or /exec/stream for Server-Sent Events)",
            "files": "PUT or GET /v1/boxes/{id}/files?path=…, GET /v1/boxes/{id}/dir?path=…",
            "more_time": "POST /v1/boxes/{id}/extend {\"minutes\"}",
            "end_it": "DELETE /v1/boxes/{id}",
            "take_a_lock": "POST /v1/locks/{key} {\"ttl_seconds\"} → 402 → pay → 201 {release_token, fencing_token}; renew with POST /v1/locks/{key}/renew, release with DELETE /v1/locks/{key}",
            "credits": "GET /v1/account, POST /v1/account/topup {\"amount\"} (x402), with an API key (X-API-Key) made by POST /compute/api-keys",
        },
        "pay_with": {
            "x402": "answer the 402 with PAYMENT-SIGNATURE (v2) or X-PAYMENT (v1): any x402 client",
            "mpp": "answer the WWW-Authenticate: Payment challenge (evm charge)",
            "credits": "send X-API-Key: vbk_… and the price is taken from the account's credits",
        },
        "links": {
            "llms_txt": "/llms.txt",
            "openapi": "/openapi.json",
            "offers": "/v1/offers",
            "mcp": "/mcp (streamable HTTP, X-API-Key), or `vendbox mcp` over stdio",
            "x402_discovery": "/discovery/resources",
        },
        "other_apis": "/openapi.json also serves other services' APIs path for path (tags marked x-vendbox-surface: seed) for their existing clients; new integrations use the paths above.",
    })
}

/// How an agent uses vendbox, in one page.
const LLMS_TXT: &str = "# vendbox

> Disposable Linux boxes (sandboxes and SSH machines) and TTL locks for AI agents, paid per
> purchase in USDC: with x402 or MPP from a wallet, or from prepaid credits with an API key.

Everything below is the native API. Prices are in USDC as decimal strings (\"0.25\").
Errors are JSON `{\"error\":{\"code\",\"message\",\"field\"}}`; the message says what to do.

## 1. See what is sold

`GET /v1/offers` lists every offer: `id`, `kind` (`sandbox`, `machine`, `lock`), `includes`
(compute, network, image, SSH, commands, duration, in words), `price_usdc` (null when the price
depends on your choices) and `pricing`. `POST /v1/quotes {\"offer_id\":\"…\",\"minutes\":10,
\"actions\":5}` prices a purchase.

## 2. Pay

A paid request answered without payment gets `402 Payment Required` with the terms:
x402 (`PAYMENT-REQUIRED` header, v2; the JSON body, v1) and MPP (`WWW-Authenticate: Payment`).
Pay with any x402 client (it retries with `PAYMENT-SIGNATURE`) or MPP client, or skip the 402:
send `X-API-Key: vbk_…` and the price comes out of your credits. Make a key with
`POST /compute/api-keys` (signed by your wallet), top up with `POST /v1/account/topup
{\"amount\":\"1.00\"}` (paid with x402), see the balance with `GET /v1/account`. Money moves only
when the purchase succeeded.

## 3. A box (sandbox) or a machine

    POST /v1/boxes {\"offer\":\"<id>\",\"minutes\":10,\"actions\":5,\"ssh_public_key\":\"ssh-ed25519 …\"}
    → 201 {\"id\":\"…\",\"token\":\"…\",\"expires_at\":\"…\",\"ssh_command\":\"ssh -p … <id>@host\"}

Keep `token`: every call on the box sends `Authorization: Bearer <token>`.

- Run: `POST /v1/boxes/{id}/exec {\"command\":\"python3 -c 'print(6*7)'\",\"timeout_seconds\":60}`
  → `{exit_code, stdout, stderr, …}`; `POST /v1/boxes/{id}/exec/stream` streams the output
  as Server-Sent Events. A command spends one action when the offer has a budget.
- Files: `PUT /v1/boxes/{id}/files?path=/root/a.txt` (body: the bytes),
  `GET /v1/boxes/{id}/files?path=/root/a.txt`, `GET /v1/boxes/{id}/dir?path=/root`.
- SSH (machines, or any box bought with `ssh_public_key`): run `ssh_command` with that key.
- Servers in the box: `/v1/boxes/{id}/ports/{port}/…` with the token.
- More time: `POST /v1/boxes/{id}/extend {\"minutes\":30}` (paid; per-minute offers).
- End it: `DELETE /v1/boxes/{id}`; unused whole minutes of a per-minute offer come back as credits.

## 4. A lock

    POST /v1/locks/deploy:prod {\"ttl_seconds\":300,\"owner\":\"agent-7\"}
    → 201 {\"acquired\":true,\"release_token\":\"…\",\"fencing_token\":42,\"lock\":{…}}

A key someone else holds answers 200 `acquired:false` with the holder, and costs nothing;
`?wait_seconds=30` waits for it. Pass `fencing_token` to what the lock protects and have it refuse
lower tokens. Renew: `POST /v1/locks/{key}/renew {\"ttl_seconds\":300}` (paid), release:
`DELETE /v1/locks/{key}` (free), both with `Authorization: Bearer <release_token>`.

## MCP

The same operations are MCP tools: streamable HTTP at `/mcp` with `X-API-Key`, or
`vendbox mcp` over stdio (`VENDBOX_URL`, and `VENDBOX_API_KEY` or `VENDBOX_WALLET_KEY` with
`--spend-cap`). Tools: list_offers, quote, buy_box, exec, read_file, write_file, list_files,
ssh_details, extend_box, terminate_box, acquire_lock, renew_lock, release_lock, balance, top_up.

## More

- `GET /` : this, as JSON.
- `GET /openapi.json` : every operation. Tags marked `x-vendbox-surface: seed` are other
  services' APIs, served path for path for their existing clients; use the paths above.
- `GET /discovery/resources` : the paid resources in x402 Bazaar's discovery shape; every 402
  declares its route's input and output schemas (`extensions.bazaar`).
";
