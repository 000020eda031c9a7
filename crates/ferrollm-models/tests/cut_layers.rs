//! `gguf::cut_layers` on the real models: the cut file loads as a smaller model with the same
//! tokenizer, and its logits are exactly the full model's first N layers + final norm + head.

mod common;

use std::path::Path;
use std::sync::Arc;

use ferrollm_kernels::CpuBackend;
use ferrollm_models::gguf::{cut_layers, GgufFile};
use ferrollm_models::{load_model, ForwardBatch, KvCache, LlamaModel, SeqSlice};

/// Logits at every position of `tokens` in one prefill, through the first `layers` layers.
fn logits(model: &LlamaModel, tokens: &[u32], layers: usize) -> Vec<f32> {
    let bs = 16;
    let blocks = tokens.len().div_ceil(bs);
    let mut kv = KvCache::new(&model.config, blocks, bs);
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let positions: Vec<u32> = (0..tokens.len() as u32).collect();
    let slots: Vec<usize> = (0..tokens.len()).map(|p| kv.slot(&table, p)).collect();
    let seqs = [SeqSlice {
        query_start: 0,
        query_len: tokens.len(),
        start_pos: 0,
        prompt_len: tokens.len(),
        block_table: &table,
    }];
    let rows: Vec<usize> = (0..tokens.len()).collect();
    let batch = ForwardBatch {
        token_ids: tokens,
        positions: &positions,
        slot_mapping: &slots,
        seqs: &seqs,
        logits_indices: &rows,
    };
    model.forward_layers(&batch, &mut kv, layers)
}

fn check(file: &str, keep: usize, blocks: usize) {
    let input = common::model(file);
    let dir = common::temp_dir("cut");
    let out = dir.join("draft.gguf");
    let s = cut_layers(&input, &out, keep).unwrap();
    assert_eq!((s.blocks_before, s.blocks_after), (blocks, keep));
    assert_eq!(
        s.tensors_dropped,
        9 * (blocks - keep) + if s.architecture == "qwen2" { 3 * (blocks - keep) } else { 0 }
    );
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.require_usize(&format!("{}.block_count", s.architecture)).unwrap(), keep);
    assert!(std::fs::metadata(&out).unwrap().len() < std::fs::metadata(&input).unwrap().len());

    let be = Arc::new(CpuBackend::new());
    let full = load_model(&input, be.clone()).unwrap();
    let cut = load_model(&out, be).unwrap();
    assert_eq!(cut.model.num_layers(), keep);
    assert_eq!(cut.model.config.vocab_size, full.model.config.vocab_size);
    let prompt = "The capital of France is Paris. def add(a, b):\n    return a + b\n";
    let tokens = full.tokenizer.encode(prompt, true).unwrap();
    assert_eq!(cut.tokenizer.encode(prompt, true).unwrap(), tokens, "tokenizer metadata must survive the cut");
    let want = logits(&full.model, &tokens, keep);
    let got = logits(&cut.model, &tokens, keep);
    assert_eq!(got.len(), tokens.len() * full.model.config.vocab_size);
    assert_eq!(got, want, "the cut model must compute exactly the first {keep} layers of the full one");
    // And it is a different function from the full model (the cut did something).
    assert_ne!(logits(&full.model, &tokens, blocks), want);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cut_smollm2_to_8_layers_equals_its_first_8_layers() {
    check(common::SMOLLM2, 8, 30);
}

#[test]
fn cut_qwen_to_6_layers_equals_its_first_6_layers() {
    check(common::QWEN25_CODER, 6, 24);
}

#[test]
fn bad_cut_requests_say_why() {
    let dir = common::temp_dir("cut-bad");
    let out = dir.join("x.gguf");
    let err = cut_layers(&common::model(common::SMOLLM2), &out, 30).unwrap_err().to_string();
    assert!(err.contains("--keep must be between 1 and 29 (the model has 30 blocks), got 30"), "{err}");
    let err = cut_layers(Path::new("/nonexistent/model.gguf"), &out, 2).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    let not_gguf = dir.join("not.gguf");
    std::fs::write(&not_gguf, b"this is not a gguf file at all, just text").unwrap();
    let err = cut_layers(&not_gguf, &out, 2).unwrap_err().to_string();
    assert!(err.contains("not.gguf"), "{err}");
    let err = cut_layers(&common::model(common::SMOLLM2), &common::model(common::SMOLLM2), 2).unwrap_err().to_string();
    assert!(err.contains("overwrite the input"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(dir).unwrap();
}
