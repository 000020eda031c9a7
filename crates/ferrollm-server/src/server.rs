//! Binding, the startup banner, and graceful shutdown.

use std::future::{Future, IntoFuture};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrollm_engine::Engine;
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::routes::router;
use crate::state::AppState;

/// How long in-flight requests may take to finish after Ctrl-C or SIGTERM before the server
/// exits anyway (dropping them aborts them in the engine).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the OpenAI-compatible API until Ctrl-C or SIGTERM, then stops accepting
/// connections, lets in-flight requests finish (up to [`DRAIN_TIMEOUT`]) and returns.
pub async fn serve(engine: Engine, config: ServerConfig) -> anyhow::Result<()> {
    serve_until(engine, config, shutdown_signal()).await
}

/// [`serve`] with the shutdown trigger supplied by the caller (tests, embedding programs).
pub async fn serve_until(
    engine: Engine,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    let info = engine.info().clone();
    println!("ferrollm: serving model '{}' ({}) at http://{addr}/v1", config.served_model_name, info.model_description);
    println!(
        "ferrollm: max_model_len {} tokens; KV cache {} tokens ({} blocks of {}){}",
        info.max_model_len,
        info.kv_capacity_tokens,
        info.num_kv_blocks,
        info.block_size,
        if config.api_key.is_some() { "; API key required on /v1" } else { "" }
    );
    let state = AppState::new(engine.clone(), config);
    let drain_engine = engine.clone();
    let app = router(state);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<Instant>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = begun_tx.send(Instant::now());
        let _ = stop_tx.send(());
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let server = std::pin::pin!(server.into_future());

    // Graceful shutdown waits for every open connection; bound that wait.
    let deadline = async move {
        match begun_rx.await {
            Ok(begun) => {
                println!("ferrollm: shutting down; draining {} in-flight requests", engine.num_pending());
                // A second Ctrl-C skips the wait.
                tokio::select! {
                    _ = tokio::time::sleep_until((begun + DRAIN_TIMEOUT).into()) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                Some(engine)
            }
            // The signal task ended without a signal: never time out.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        res = server => {
            res.context("server error")?;
            // Every connection is closed, so every stream was dropped; wait briefly for the
            // engine to retire what the output thread has not yet counted.
            let until = Instant::now() + Duration::from_secs(2);
            while drain_engine.num_pending() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        engine = deadline => {
            let pending = engine.map(|e| e.num_pending()).unwrap_or(0);
            println!("ferrollm: drain ended with {pending} requests in flight; aborting them");
        }
    }
    println!("ferrollm: stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix (what `docker stop` and systemd send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
