//! ferrollm's OpenAI-compatible HTTP server: `/v1/completions`, `/v1/chat/completions`
//! (streaming and not), `/v1/models`, `/tokenize`, `/detokenize`, `/health`, `/version` and
//! `/metrics`, over the engine's async request streams.
//!
//! The server only sends requests to the engine and reads their streams; it never touches the
//! scheduler or the model. Call [`serve`] with a running [`ferrollm_engine::Engine`].

pub mod config;
pub mod cors;
pub mod errors;
pub mod extract;
pub mod logprobs;
pub mod params;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod sse;
pub mod state;
pub mod structured;

pub use config::ServerConfig;
pub use errors::ApiError;
pub use routes::router;
pub use server::{serve, serve_until, DRAIN_TIMEOUT};
pub use state::AppState;
