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
