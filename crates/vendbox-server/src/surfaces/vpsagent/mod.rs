//! The VpsAgent API, path for path: the paid discovery `catalog`, and `rentals` (rent, status,
//! renew, the live instance). Paid answers carry VpsAgent's `X-Payment-Response` receipt
//! (`catalog::with_receipt`).

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Routes;

pub mod catalog;
pub mod rentals;

/// VpsAgent's operations.
pub fn routes() -> Routes {
    Routes {
        quick: OpenApiRouter::new()
            .routes(routes!(catalog::catalog))
            .routes(routes!(rentals::rent))
            .routes(routes!(rentals::get))
            .routes(routes!(rentals::renew))
            .routes(routes!(rentals::instance)),
        ..Routes::default()
    }
}
