//! The x402Compute API (`../shared/seeds/x402compute.md`), path for path: `plans` (plans, regions
//! and OS images from the catalog), `instances` (paid provision and extension; list, get,
//! destroy and the one-time password for the owner) and `keys` (API keys, with vendbox's scopes
//! and caps). Management routes take the wallet's signature (`X-Auth-*`) or an
//! API key (`X-API-Key`), checked by `auth::authenticate` before the handler runs.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Routes;

pub mod instances;
pub mod keys;
pub mod plans;

/// x402Compute's operations.
pub fn routes() -> Routes {
    Routes {
        quick: OpenApiRouter::new()
            .routes(routes!(keys::create, keys::list))
            .routes(routes!(keys::revoke))
            .routes(routes!(plans::plans))
            .routes(routes!(plans::regions))
            .routes(routes!(plans::os))
            .routes(routes!(instances::provision))
            .routes(routes!(instances::list))
            .routes(routes!(instances::get, instances::destroy))
            .routes(routes!(instances::password))
            .routes(routes!(instances::extend)),
        ..Routes::default()
    }
}
