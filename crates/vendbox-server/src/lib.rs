//! vendbox's HTTP server: configuration, the axum application (native API, OpenAPI document,
//! metrics), background workers, and graceful serving.

pub mod app;
pub mod auth;
pub mod boxes;
pub mod config;
pub mod digest;
pub mod discovery;
pub mod error;
pub mod gate;
pub mod index;
pub mod json;
pub mod metrics;
pub mod offers_now;
pub mod openapi;
pub mod peers;
pub mod purge;
pub mod serve;
pub mod settlement;
pub mod ssh;
pub mod surfaces;
pub mod worker;

pub use app::{AppParts, AppState, Limits, router};
pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use serve::{Secrets, Server, shutdown_signal};
