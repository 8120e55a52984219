//! The H3RETIK Cloud API, path for path: its sandbox sessions (`sessions`) and its Agent Lock
//! (`locks`).

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Routes;

pub mod locks;
pub mod sessions;

/// H3RETIK's operations.
pub fn routes() -> Routes {
    Routes {
        quick: OpenApiRouter::new()
            .routes(routes!(locks::h3retik_acquire))
            .routes(routes!(locks::h3retik_release))
            .routes(routes!(locks::h3retik_renew))
            .routes(routes!(locks::h3retik_get))
            .routes(routes!(sessions::micro))
            .routes(routes!(sessions::probe))
            .routes(routes!(sessions::ops))
            .routes(routes!(sessions::deep))
            .routes(routes!(sessions::custom))
            .routes(routes!(sessions::get)),
        waits: OpenApiRouter::new(),
        long: OpenApiRouter::new().routes(routes!(sessions::exec)),
    }
}
