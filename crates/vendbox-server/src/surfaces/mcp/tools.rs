//! The MCP tools: each one native API call (or two: a paid call is first sent unpaid, so that
//! its 402 tells the price, which must be within the tool's `max_price_usdc` before anything is
//! spent). A refusal is a tool error (`isError`) that names the API's error code and says what
//! to do next; an MCP protocol error is kept for a request the protocol itself refuses.
//!
//! Tokens (a box's, a lock's release token) are returned to the caller and also kept for this
//! caller (by API key) in a bounded book, so a later call may leave them out.

use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};

use super::args::{
    AcquireLock, BoxRef, BuyBox, Exec, ExtendBox, ListFiles, ListOffers, QuoteArgs, ReadFile, ReleaseLock,
    RenewLock, TopUp, WriteFile,
};
use super::calls::{TokenBook, box_summary, encode, json_body, offer_summary, ok_json};
use super::{NativeApi, Spend};

/// What the server tells a model when it connects.
const INSTRUCTIONS: &str = "vendbox sells disposable Linux boxes (sandboxes and SSH machines) and \
TTL locks, paid per purchase from your account's credits (or a wallet). Typical flow: list_offers \
(pick an offer id; `sandbox` offers run commands, `machine` offers add SSH), buy_box with a \
max_price_usdc you accept, then exec / write_file / read_file / list_files with the box_id, \
extend_box for more time, terminate_box when done (unused minutes of per-minute offers are \
refunded). Locks: acquire_lock, renew_lock, release_lock (pass the fencing_token to what the lock \
protects). balance shows your credits; top_up buys more. Tokens returned by buy_box and \
acquire_lock are remembered for this account, so later calls may leave them out.";

/// The MCP server: vendbox's tools over a [`NativeApi`].
#[derive(Debug, Clone)]
pub struct Tools {
    /// Where the native API is.
    pub(super) api: Arc<dyn NativeApi>,
    /// Tokens of what callers bought.
    pub(super) book: Arc<Mutex<TokenBook>>,
    /// The tools, for `rmcp`'s dispatch.
    tool_router: ToolRouter<Tools>,
}

/// A tool's failure, as the tool error the model reads.
pub(crate) struct Failure(pub(crate) String);

impl Failure {
    fn result(self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(self.0)])
    }
}

type Outcome = Result<CallToolResult, ErrorData>;

/// A tool's answer: its JSON, or its failure as a tool error (never a protocol error, which
/// `rmcp`'s tool signature leaves room for).
#[allow(clippy::unnecessary_wraps)]
fn answer(result: Result<Value, Failure>) -> Outcome {
    Ok(match result {
        Ok(value) => CallToolResult::structured(value),
        Err(failure) => failure.result(),
    })
}

#[tool_router]
impl Tools {
    /// The tools over `api`, keeping tokens in `book`.
    pub(crate) fn new(api: Arc<dyn NativeApi>, book: Arc<Mutex<TokenBook>>) -> Tools {
        Tools { api, book, tool_router: Self::tool_router() }
    }

    #[tool(
        description = "List what vendbox sells: each offer's id, kind (sandbox, machine, lock, call), \
        what it includes (CPU, memory, disk, network, images, SSH, command budget, duration) and its \
        price in USDC (or its pricing rule when the price depends on minutes or commands; then call \
        `quote`). Free.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_offers(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<ListOffers>,
    ) -> Outcome {
        let path = match &args.kind {
            Some(kind) => format!("/v1/offers?kind={}", encode(kind)),
            None => "/v1/offers".to_owned(),
        };
        answer(self.call_json(&ctx, Method::GET, &path, None, None, Spend::Free).await.map(|list| {
            let offers: Vec<Value> =
                list["offers"].as_array().into_iter().flatten().map(offer_summary).collect();
            json!({ "offers": offers, "count": offers.len() })
        }))
    }

    #[tool(
        description = "Price a purchase before buying: an offer with the minutes, commands, image and \
        region you want. Answers the price in USDC (held for ten minutes). Free.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn quote(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<QuoteArgs>,
    ) -> Outcome {
        let body = json!({
            "offer_id": args.offer_id, "minutes": args.minutes, "actions": args.actions,
            "image": args.image, "region": args.region,
        });
        answer(self.call_json(&ctx, Method::POST, "/v1/quotes", None, Some(body), Spend::Free).await.map(|q| {
            json!({
                "offer_id": q["offer_id"], "price_usdc": q["price_usdc"], "minutes": q["minutes"],
                "actions": q["actions"], "image": q["image"], "region": q["region"], "expires_at": q["expires_at"],
            })
        }))
    }

    #[tool(
        description = "Buy a box (a `sandbox` offer) or a machine (a `machine` offer, with SSH) and wait \
        until it runs. Paid from your credits (or wallet) if the price is at most max_price_usdc; \
        nothing is spent otherwise. Answers box_id and token (keep both), expires_at, commands left \
        and, when you gave ssh_public_key, the ssh command.",
        annotations(destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn buy_box(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<BuyBox>,
    ) -> Outcome {
        answer(self.buy(&ctx, args).await)
    }

    #[tool(
        description = "Run a shell command in a box (as root, in /root, with /bin/sh -c) and wait for it: \
        answers exit_code, stdout and stderr (each cut at 256 KiB). Long commands report progress \
        (their latest output) while they run. A command that needs more than timeout_seconds (60 by \
        default, at most 1800) is killed. Each command spends one of the box's actions when its offer \
        has a budget.",
        annotations(destructive_hint = true, open_world_hint = true)
    )]
    async fn exec(&self, ctx: RequestContext<RoleServer>, Parameters(args): Parameters<Exec>) -> Outcome {
        answer(self.run(&ctx, args).await)
    }

    #[tool(
        description = "Read a file of a box (at most 1 MiB): text as it is, other bytes as base64 \
        (`encoding` says which).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_file(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<ReadFile>,
    ) -> Outcome {
        answer(self.read(&ctx, args).await)
    }

    #[tool(
        description = "Write a file into a box (text, or base64 with encoding=base64), replacing it if it \
        exists and making its parent directories.",
        annotations(destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn write_file(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<WriteFile>,
    ) -> Outcome {
        answer(self.write(&ctx, args).await)
    }

    #[tool(
        description = "List a directory of a box: each entry's name, path, kind (file, dir, symlink), \
        size and mode.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_files(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<ListFiles>,
    ) -> Outcome {
        let result = async {
            let token = self.token(&ctx, "box", &args.box_id, args.token)?;
            let path = format!(
                "/v1/boxes/{}/dir?path={}&depth={}",
                encode(&args.box_id),
                encode(args.path.as_deref().unwrap_or("/root")),
                args.depth.unwrap_or(1)
            );
            self.call_json(&ctx, Method::GET, &path, Some(&token), None, Spend::Free).await
        };
        answer(result.await)
    }

    #[tool(
        description = "A box's state, end time and commands left, and how to reach it over SSH: the \
        ssh command (with the private key of the ssh_public_key given to buy_box). Free.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn ssh_details(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<BoxRef>,
    ) -> Outcome {
        let result = async {
            let token = self.token(&ctx, "box", &args.box_id, args.token)?;
            let path = format!("/v1/boxes/{}", encode(&args.box_id));
            let mut view = self.call_json(&ctx, Method::GET, &path, Some(&token), None, Spend::Free).await?;
            if view["ssh_command"].is_null() {
                view["ssh"] =
                    json!("this vendbox runs no SSH gateway; use exec, read_file and write_file instead");
            } else {
                view["ssh"] = json!(
                    "run ssh_command with the private key whose public key was given to buy_box \
                     (ssh_public_key); a box bought without one opens only through exec and files"
                );
            }
            Ok(box_summary(&view, None))
        };
        answer(result.await)
    }

    #[tool(
        description = "Add minutes to an active box sold by time (a per-minute offer), paid from your \
        credits if the price is at most max_price_usdc. Answers the new expires_at.",
        annotations(destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn extend_box(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<ExtendBox>,
    ) -> Outcome {
        let result = async {
            let max = args.max_price_usdc.usdc("max_price_usdc")?;
            let token = self.token(&ctx, "box", &args.box_id, args.token)?;
            let path = format!("/v1/boxes/{}/extend", encode(&args.box_id));
            let body = json!({ "minutes": args.minutes });
            self.paid_json(&ctx, &path, Some(&token), &body, max).await
        };
        answer(result.await)
    }

    #[tool(
        description = "End a box now (its files are gone). Unused minutes of a per-minute offer are \
        refunded to your credits.",
        annotations(destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn terminate_box(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<BoxRef>,
    ) -> Outcome {
        let result = async {
            let token = self.token(&ctx, "box", &args.box_id, args.token)?;
            let path = format!("/v1/boxes/{}", encode(&args.box_id));
            let view = self.call_json(&ctx, Method::DELETE, &path, Some(&token), None, Spend::Free).await?;
            Ok(box_summary(&view, None))
        };
        answer(result.await)
    }

    #[tool(
        description = "Take a TTL lock on a key so that only you do something (a deploy, a migration). \
        Paid per grant if the price is at most max_price_usdc; a key someone else holds answers \
        acquired=false with its holder and costs nothing. Answers release_token (for renew_lock and \
        release_lock) and fencing_token (strictly increasing per key: pass it to what the lock \
        protects).",
        annotations(destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn acquire_lock(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<AcquireLock>,
    ) -> Outcome {
        answer(self.acquire(&ctx, args).await)
    }

    #[tool(
        description = "Renew a lock you hold for ttl_seconds from now, paid if the price is at most \
        max_price_usdc. Fails (and costs nothing) when the lock lapsed or was released.",
        annotations(destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn renew_lock(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<RenewLock>,
    ) -> Outcome {
        let result = async {
            let max = args.max_price_usdc.usdc("max_price_usdc")?;
            let token = self.token(&ctx, "lock", &args.key, args.release_token)?;
            let path = format!("/v1/locks/{}/renew", encode(&args.key));
            let body = json!({ "ttl_seconds": args.ttl_seconds });
            self.paid_json(&ctx, &path, Some(&token), &body, max).await
        };
        answer(result.await)
    }

    #[tool(
        description = "Release a lock you hold, so others may take it at once. Free; releasing twice is \
        harmless.",
        annotations(destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn release_lock(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<ReleaseLock>,
    ) -> Outcome {
        let result = async {
            let token = self.token(&ctx, "lock", &args.key, args.release_token)?;
            let path = format!("/v1/locks/{}", encode(&args.key));
            self.call_json(&ctx, Method::DELETE, &path, Some(&token), None, Spend::Free).await
        };
        answer(result.await)
    }

    #[tool(
        description = "Your account's credits: balance, what is held for purchases in progress, what \
        is available, the newest entries, and the top-up limits. Free.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn balance(&self, ctx: RequestContext<RoleServer>) -> Outcome {
        answer(self.call_json(&ctx, Method::GET, "/v1/account", None, None, Spend::Free).await)
    }

    #[tool(
        description = "Buy credits for your account, paid with x402 (USDC) from the wallet `vendbox mcp` \
        was started with. Over HTTP (no wallet) this tells you how to pay the top-up yourself.",
        annotations(destructive_hint = false, idempotent_hint = false, open_world_hint = true)
    )]
    async fn top_up(&self, ctx: RequestContext<RoleServer>, Parameters(args): Parameters<TopUp>) -> Outcome {
        let result = async {
            let amount = args.amount_usdc.usdc("amount_usdc")?;
            let body = json!({ "amount": amount.to_decimal_string() });
            let reply = self
                .call(
                    &ctx,
                    Method::POST,
                    "/v1/account/topup",
                    None,
                    Some(json_body(&body)),
                    Spend::UpTo(amount),
                )
                .await?;
            if reply.status == StatusCode::PAYMENT_REQUIRED {
                return Err(Failure(format!(
                    "a top-up is paid with x402 from a wallet, and this MCP connection has none: pay \
                     POST /v1/account/topup with body {body} and your API key in X-API-Key with an x402 \
                     client (`vendbox fetch --max-price {amount} -X POST -d '{body}' URL/v1/account/topup`), \
                     or start `vendbox mcp` with VENDBOX_WALLET_KEY"
                )));
            }
            ok_json(&reply)
        };
        answer(result.await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("vendbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
