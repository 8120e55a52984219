//! The surfaces: one per API vendbox serves, each an adapter that reads its own shapes, calls the
//! services (`vendbox-service`) and answers in its own dialect (bodies, headers, statuses). Each
//! lists its operations once, in its `routes()`, which both routes and documents them
//! (utoipa-axum's `routes!`); `app::operations` gathers them under the layers they need.
//!
//! - `e2b`: E2B's control plane (`/sandboxes…`) and envd (by `E2b-Sandbox-Id`), for the
//!   stock `e2b` SDKs;
//! - `native`: vendbox's own API (`/v1/…`, `/healthz`): offers, quotes, payments, locks, boxes
//!   and their ports;
//! - `h3retik`: the H3RETIK Cloud API (`/x402/sessions/…`, `/x402/locks/…`);
//! - `vpsagent`: the VpsAgent API (`/catalog`, `/rent`, `/rentals/…`, `/instance/…`);
//! - `storefront`: the Agentic Compute Storefront API (`/api/…`), and `storefront_orders` its MPP
//!   orders (`/api/machine/mpp/orders…`);
//! - `x402compute`: the x402Compute API (`/compute/…`);
//! - `secretvm`: SecretVM's agent API (`/api/agent/…`, `/api/vm/create`);
//! - `mcp`: the MCP tools over the native API, at `/mcp` and for `vendbox mcp` (stdio).

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

pub mod e2b;
pub mod h3retik;
pub mod mcp;
pub mod native;
pub mod secretvm;
pub mod storefront;
pub mod storefront_orders;
pub mod vpsagent;
pub mod x402compute;

/// A surface's operations, by how long they may take.
#[derive(Default)]
pub struct Routes {
    /// Answered within the request timeout, with small bodies.
    pub quick: OpenApiRouter<AppState>,
    /// Lock acquisitions that may wait for their key, up to a minute past the request timeout.
    pub waits: OpenApiRouter<AppState>,
    /// Commands, files and box ports: as long as they need (their own limits bound them), with
    /// bigger bodies.
    pub long: OpenApiRouter<AppState>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

impl Routes {
    /// Both surfaces' operations together.
    #[must_use]
    pub fn merge(self, other: Routes) -> Routes {
        Routes {
            quick: self.quick.merge(other.quick),
            waits: self.waits.merge(other.waits),
            long: self.long.merge(other.long),
        }
    }
}

/// Every surface's operations.
pub fn all() -> Routes {
    native::routes()
        .merge(e2b::routes())
        .merge(h3retik::routes())
        .merge(vpsagent::routes())
        .merge(storefront::routes())
        .merge(storefront_orders::routes())
        .merge(x402compute::routes())
        .merge(secretvm::routes())
}
