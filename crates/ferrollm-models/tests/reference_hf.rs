//! Logits of Hugging Face directories (safetensors, f32/f16/bf16) against transformers.
//!
//! Fixtures under tests/fixtures/hf come from scripts/ref/gen_hf_fixtures.py: tiny
//! random-weight Llama and Qwen2 models and the logits transformers computed for them.

use std::path::PathBuf;
use std::sync::Arc;

use ferrollm_kernels::CpuBackend;
use ferrollm_models::{load_model, ForwardBatch, KvCache, SeqSlice};
use serde_json::Value;

/// Logits with an f32 KV cache must match within `tol`; with the engine's f16 KV cache, within
/// `F16_KV_TOL` (K and V rounded to 11 significant bits; transformers keeps them in f32).
fn check(dir: &str, tol: f32) {
    check_kv(dir, tol, KvCache::new_f32);
    check_kv(&format!("{dir} (f16 KV)"), F16_KV_TOL, KvCache::new);
}

const F16_KV_TOL: f32 = 1e-2;

fn check_kv(label: &str, tol: f32, new_kv: fn(&ferrollm_models::ModelConfig, usize, usize) -> KvCache) {
    let dir = label.split(' ').next().unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf").join(dir);
    let m = load_model(&path, Arc::new(CpuBackend::new())).expect("model loads");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path.join("logits.json")).unwrap()).unwrap();
    let vocab = m.model.config.vocab_size;
    let mut worst = 0f32;
    for case in fx.as_array().unwrap() {
        let ids: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let bs = 16;
        let blocks = ids.len().div_ceil(bs);
        let mut kv = new_kv(&m.model.config, blocks, bs);
        let table: Vec<u32> = (0..blocks as u32).collect();
        let positions: Vec<u32> = (0..ids.len() as u32).collect();
        let slots: Vec<usize> = (0..ids.len()).map(|p| kv.slot(&table, p)).collect();
        let seqs = [SeqSlice {
            query_start: 0,
            query_len: ids.len(),
            start_pos: 0,
            prompt_len: ids.len(),
            block_table: &table,
        }];
        let rows: Vec<usize> = (0..ids.len()).collect();
        let batch = ForwardBatch {
            token_ids: &ids,
            positions: &positions,
            slot_mapping: &slots,
            seqs: &seqs,
            logits_indices: &rows,
        };
        let ours = m.model.forward(&batch, &mut kv);
        let want = case["logits"].as_array().unwrap();
        assert_eq!(want.len(), ids.len());
        for (r, row) in want.iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                let d = (ours[r * vocab + c] - v.as_f64().unwrap() as f32).abs();
                worst = worst.max(d);
            }
        }
    }
    eprintln!("{label}: max |logit difference| {worst:.2e}");
    assert!(worst < tol, "{label}: logits differ from transformers by {worst}");
}

#[test]
fn tiny_llama_f32_matches_transformers() {
    check("tiny-llama", 1e-3);
}

#[test]
fn tiny_qwen2_f32_matches_transformers() {
    check("tiny-qwen2", 1e-3);
}

#[test]
fn tiny_llama_f16_and_bf16_match_transformers() {
    check("tiny-llama-f16", 1e-3);
    check("tiny-llama-bf16", 1e-3);
}

#[test]
fn tiny_qwen2_f16_and_bf16_match_transformers() {
    check("tiny-qwen2-f16", 1e-3);
    check("tiny-qwen2-bf16", 1e-3);
}
