//! Shared helpers for tests that need the real models.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path of a cached model; a missing file fails the test with the command that fetches it.
pub fn model_path(file: &str) -> PathBuf {
    let cache = std::env::var("FERROLLM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/ferrollm"));
    let p = cache.join("models").join(file);
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh to fetch the test models", p.display());
    p
}

pub fn smollm2() -> PathBuf {
    model_path("SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn qwen() -> PathBuf {
    model_path("qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf")
}

/// `model` cut to its first `keep` blocks with `ferrollm cut-layers`' code, written into a
/// fresh temp dir: a draft model with the same vocabulary.
pub fn cut_draft(model: &std::path::Path, keep: usize) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferrollm-engine-test-{}-{}-draft",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let out = dir.join(format!("draft-{keep}.gguf"));
    ferrollm_models::gguf::cut_layers(model, &out, keep).expect("cut-layers");
    out
}

/// A draft_model `--speculative-config` for `path` with `k` draft tokens.
pub fn draft_model_spec(path: &std::path::Path, k: usize) -> String {
    serde_json::json!({"method": "draft_model", "model": path, "num_speculative_tokens": k}).to_string()
}
