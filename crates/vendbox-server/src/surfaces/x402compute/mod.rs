//! The x402Compute API (`../shared/seeds/x402compute.md`), path for path: `keys` (API keys, with
//! vendbox's scopes and caps). Management routes take the wallet's signature (`X-Auth-*`) or an
//! API key (`X-API-Key`), checked by `auth::authenticate` before the handler runs.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Routes;

pub mod keys;

/// x402Compute's operations.
pub fn routes() -> Routes {
    Routes {
        quick: OpenApiRouter::new().routes(routes!(keys::create, keys::list)).routes(routes!(keys::revoke)),
        ..Routes::default()
    }
}
