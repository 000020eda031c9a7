//! Checks against the two real models the engine is developed with: config, tensors and
//! tokenizer, with llama.cpp's ids committed in `fixtures/llama_cpp_tokens.json`.

mod common;

use ferrollm_kernels::ops::RopeStyle;
use ferrollm_kernels::DType;
use ferrollm_models::gguf::GgufFile;
use ferrollm_models::{Architecture, ModelConfig, Tokenizer, WeightSource};
use serde_json::Value;

fn fixture(model: &str) -> Value {
    let text = include_str!("fixtures/llama_cpp_tokens.json");
    let all: Value = serde_json::from_str(text).unwrap();
    all["models"][model].clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Tokenization, EOG and control sets must equal llama.cpp's.
fn check_tokenizer_against_llama_cpp(model: &str, tok: &Tokenizer) {
    let fx = fixture(model);
    assert_eq!(tok.vocab_size() as u64, fx["n_vocab"].as_u64().unwrap());
    assert_eq!(tok.bos_token_id().map(u64::from), fx["bos"].as_u64());
    assert_eq!(tok.eos_token_id().map(u64::from), fx["eos"].as_u64());
    assert_eq!(tok.add_bos(), fx["add_bos"].as_bool().unwrap());
    let mut eog = tok.eos_token_ids();
    assert_eq!(eog[0], tok.eos_token_id().unwrap(), "EOS comes first");
    eog.sort_unstable();
    assert_eq!(eog, ids(&fx["eog"]), "end-of-generation set");
    let control: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&i| tok.is_special(i)).collect();
    assert_eq!(control, ids(&fx["control"]), "control tokens");

    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode_plain(text, false).unwrap(), ids(&case["plain"]), "plain: {text:?}");
        assert_eq!(tok.encode(text, false).unwrap(), ids(&case["special"]), "special: {text:?}");
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["with_bos"]), "with BOS: {text:?}");
        let round = tok.decode(&tok.encode(text, false).unwrap(), false).unwrap();
        assert_eq!(round, text, "round trip");
    }
}

#[test]
fn smollm2_config_and_tensors() {
    let g = GgufFile::open(common::model(common::SMOLLM2)).unwrap();
    let c = ModelConfig::from_gguf(&g).unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
        (49152, 576, 1536, 30, 9, 3, 64)
    );
    assert_eq!(c.rope_theta, 100000.0);
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert_eq!(c.max_position_embeddings, 8192);
    assert!(c.tie_word_embeddings, "SmolLM2 has no output.weight");

    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!((emb.dtype, emb.shape.clone()), (DType::Q8_0, vec![49152, 576]));
    assert_eq!(emb.bytes.len(), 49152 * 576 / 32 * 34);
    let gate = g.tensor("blk.0.ffn_gate.weight").unwrap();
    assert_eq!((gate.dtype, gate.shape.clone()), (DType::Q4_1, vec![1536, 576]));
    let down = g.tensor("blk.0.ffn_down.weight").unwrap().into_matrix().unwrap();
    assert_eq!((down.rows, down.cols), (576, 1536));
    let norm = g.tensor("output_norm.weight").unwrap().to_f32().unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|v| v.is_finite()));
    // Every tensor is loadable.
    for t in g.tensors() {
        g.tensor(&t.name).unwrap().into_matrix().unwrap_or_else(|e| panic!("{}: {e}", t.name));
    }
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    let g = GgufFile::open(common::model(common::SMOLLM2)).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("The capital of France is", false).unwrap(), vec![504, 3575, 282, 4649, 314]);
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    check_tokenizer_against_llama_cpp(common::SMOLLM2, &tok);
}

#[test]
fn qwen25_coder_config_and_tensors() {
    let g = GgufFile::open(common::model(common::QWEN25_CODER)).unwrap();
    let c = ModelConfig::from_gguf(&g).unwrap();
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!(c.rope_style, RopeStyle::NeoX);
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
        (151936, 896, 4864, 24, 14, 2, 64)
    );
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.max_position_embeddings, 32768);
    assert!(!c.tie_word_embeddings, "this GGUF has output.weight");
    let bias = g.tensor("blk.0.attn_q.bias").unwrap();
    assert_eq!((bias.dtype, bias.shape.clone()), (DType::F32, vec![896]));
    let k = g.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.shape, vec![128, 896]);
    for t in g.tensors() {
        g.tensor(&t.name).unwrap().into_matrix().unwrap_or_else(|e| panic!("{}: {e}", t.name));
    }
}

#[test]
fn qwen25_coder_tokenizer_matches_llama_cpp() {
    let g = GgufFile::open(common::model(common::QWEN25_CODER)).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("The capital of France is", false).unwrap(), vec![785, 6722, 315, 9625, 374]);
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    check_tokenizer_against_llama_cpp(common::QWEN25_CODER, &tok);
}

#[test]
fn loaded_types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<GgufFile>();
    assert_send_sync::<ferrollm_models::safetensors_dir::SafetensorsDir>();
}

#[test]
fn qwen25_tokenizer_loads_quickly() {
    // 152k tokens and 151k merges: loading is on the startup path, keep an eye on it.
    let g = GgufFile::open(common::model(common::QWEN25_CODER)).unwrap();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let took = t0.elapsed();
    eprintln!("qwen2.5 tokenizer built in {took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_eq!(tok.vocab_size(), 151936);

    // Streaming output decodes token by token; that must not cost a vocabulary scan each time.
    let ids = tok.encode(&"The quick brown fox jumps over the lazy dog. ".repeat(50), false).unwrap();
    let t0 = std::time::Instant::now();
    for &id in &ids {
        tok.decode(&[id], false).unwrap();
    }
    let per = t0.elapsed() / ids.len() as u32;
    assert!(per < std::time::Duration::from_millis(1), "decoding one token takes {per:?}");
}
