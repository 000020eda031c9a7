//! What the server needs beyond the engine.

/// How and where to serve. The CLI fills it from `ferrollm serve`'s flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to bind, e.g. "127.0.0.1" or "0.0.0.0".
    pub host: String,
    /// Port to bind; 0 picks a free one (the address printed at startup tells which).
    pub port: u16,
    /// When set, `/v1/*` requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The name clients pass as `model` and `/v1/models` lists.
    pub served_model_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { host: "127.0.0.1".into(), port: 8000, api_key: None, served_model_name: "default".into() }
    }
}
