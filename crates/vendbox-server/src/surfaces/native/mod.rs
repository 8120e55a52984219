//! vendbox's own API, one module per resource: `health`, `account`, `offers`, `quotes`, `payments`, `locks`,
//! `boxes` (and a box's `extend`, `dirs` and `ports`). The seed surfaces reuse its purchase (`boxes::buy`) and lock
//! rules.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Routes;

pub mod account;
pub mod boxes;
pub mod dirs;
pub mod extend;
pub mod health;
pub mod locks;
pub mod offers;
pub mod payments;
pub mod ports;
pub mod quotes;

/// The native operations.
pub fn routes() -> Routes {
    Routes {
        quick: OpenApiRouter::new()
            .routes(routes!(health::healthz))
            .routes(routes!(account::get))
            .routes(routes!(account::topup))
            .routes(routes!(account::ledger))
            .routes(routes!(account::payments))
            .routes(routes!(offers::list))
            .routes(routes!(offers::get))
            .routes(routes!(quotes::create))
            .routes(routes!(quotes::get))
            .routes(routes!(payments::get))
            .routes(routes!(locks::native_renew))
            .routes(routes!(boxes::create))
            .routes(routes!(extend::extend))
            .routes(routes!(boxes::get, boxes::terminate)),
        waits: OpenApiRouter::new().routes(routes!(
            locks::native_get,
            locks::native_acquire,
            locks::native_release
        )),
        long: OpenApiRouter::new()
            .routes(routes!(boxes::exec))
            .routes(routes!(boxes::exec_stream))
            .routes(routes!(boxes::read_file, boxes::write_file))
            .routes(routes!(dirs::list))
            // A box's server answers at its own pace; bodies stream through, never gathered.
            .routes(ports::at_root())
            .routes(ports::below()),
    }
}
