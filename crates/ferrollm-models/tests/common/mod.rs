//! Shared helpers for the integration tests: locating test data and temp dirs.
#![allow(dead_code)]

use std::path::PathBuf;

/// `$FERROLLM_CACHE`, default `~/.cache/ferrollm` (as the fetch scripts use).
fn cache_root() -> PathBuf {
    if let Some(c) = std::env::var_os("FERROLLM_CACHE") {
        return PathBuf::from(c);
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/ferrollm")
}

/// llama.cpp's tokenizer test vectors, fetched by `scripts/fetch-test-data.sh`.
pub fn testdata_dir() -> PathBuf {
    std::env::var_os("FERROLLM_TESTDATA").map(PathBuf::from).unwrap_or_else(|| cache_root().join("testdata"))
}

/// A file from the test-vector cache; panics (fails the test) with the fix when it is missing.
pub fn testdata(name: &str) -> PathBuf {
    let p = testdata_dir().join(name);
    assert!(
        p.is_file(),
        "missing test data {}: run scripts/fetch-test-data.sh (set FERROLLM_TESTDATA to use another directory)",
        p.display()
    );
    p
}

/// Directory holding the real model files the engine is developed against.
pub fn models_dir() -> PathBuf {
    std::env::var_os("FERROLLM_MODELS").map(PathBuf::from).unwrap_or_else(|| cache_root().join("models"))
}

/// A real model file; panics with a clear message when it is missing.
pub fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(p.is_file(), "missing model {}: run scripts/fetch-models.sh (or set FERROLLM_MODELS)", p.display());
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN25_CODER: &str = "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf";

/// A fresh, empty directory under the system temp dir, unique to this test run and `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "ferrollm-models-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("create temp dir");
    p
}
