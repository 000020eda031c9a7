//! Hugging Face directories: config.json parsing, safetensors loading under GGUF names, and
//! tokenizer.json loading.

mod common;

use std::path::Path;

use ferrollm_kernels::ops::RopeStyle;
use ferrollm_kernels::DType;
use ferrollm_models::gguf::GgufFile;
use ferrollm_models::safetensors_dir::SafetensorsDir;
use ferrollm_models::{Architecture, ModelConfig, ModelError, Tokenizer, WeightSource};
use serde_json::json;

fn qwen2_config() -> serde_json::Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "vocab_size": 151936,
        "tie_word_embeddings": true
    })
}

#[test]
fn hf_config_qwen2_llama_mistral() {
    let c = ModelConfig::from_hf_config(&qwen2_config()).unwrap();
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!(c.rope_style, RopeStyle::NeoX);
    assert_eq!((c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim), (896, 14, 2, 64));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (1e6, 1e-6));
    assert!(c.tie_word_embeddings);

    let llama = json!({
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000,
        "max_position_embeddings": 8192, "vocab_size": 49152
    });
    let c = ModelConfig::from_hf_config(&llama).unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(c.rope_style, RopeStyle::NeoX, "HF weights are not permuted");
    assert!(!c.tie_word_embeddings, "llama defaults to an untied head");
    assert_eq!(c.rope_theta, 100000.0);

    // Mistral: explicit head_dim, no num_key_value_heads means MHA.
    let mistral = json!({
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "head_dim": 128, "max_position_embeddings": 32768, "vocab_size": 32768
    });
    let c = ModelConfig::from_hf_config(&mistral).unwrap();
    assert_eq!((c.num_kv_heads, c.head_dim, c.rope_theta), (32, 128, 10000.0));
}

#[test]
fn hf_config_errors_name_the_problem() {
    let err = |v: serde_json::Value| ModelConfig::from_hf_config(&v).unwrap_err();
    assert!(
        matches!(err(json!({"model_type": "gpt_neox"})), ModelError::UnsupportedArchitecture(a) if a == "gpt_neox")
    );
    assert!(err(json!([1, 2])).to_string().contains("not a JSON object"));
    assert!(err(json!({"hidden_size": 8})).to_string().contains("model_type"));
    let mut c = qwen2_config();
    c.as_object_mut().unwrap().remove("num_hidden_layers");
    assert!(err(c).to_string().contains("num_hidden_layers"));
    let mut c = qwen2_config();
    c["hidden_size"] = json!("896");
    assert!(err(c).to_string().contains("hidden_size"));
    let mut c = qwen2_config();
    c["num_key_value_heads"] = json!(3);
    assert!(err(c).to_string().contains("KV heads"));
}

#[test]
fn gguf_config_rejects_unknown_architectures() {
    let mut w = ferrollm_models::gguf::GgufWriter::new();
    w.add_str("general.architecture", "gpt2");
    let g = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert!(matches!(ModelConfig::from_gguf(&g), Err(ModelError::UnsupportedArchitecture(a)) if a == "gpt2"));

    let mut w = ferrollm_models::gguf::GgufWriter::new();
    w.add_str("general.architecture", "llama").add_u32("llama.embedding_length", 64);
    let g = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let err = ModelConfig::from_gguf(&g).unwrap_err().to_string();
    assert!(err.contains("llama.attention.head_count"), "{err}");
}

/// Writes a safetensors file by hand: 8-byte header length, JSON header, data.
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(name.to_string(), json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn tiny_llama_config() -> serde_json::Value {
    json!({
        "model_type": "llama", "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 16, "vocab_size": 3
    })
}

#[test]
fn safetensors_dir_serves_gguf_names() {
    let dir = common::temp_dir("st");
    std::fs::write(dir.join("config.json"), tiny_llama_config().to_string()).unwrap();
    let emb: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let f16: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let bf16: Vec<u8> = [0.5f32, -1.0, 2.0, 8.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    write_safetensors(
        &dir.join("model-00001-of-00002.safetensors"),
        &[
            ("model.embed_tokens.weight", "F32", vec![3, 4], f32_bytes(&emb)),
            ("model.layers.0.input_layernorm.weight", "F16", vec![4], f16),
        ],
    );
    write_safetensors(
        &dir.join("model-00002-of-00002.safetensors"),
        &[
            ("model.layers.0.self_attn.q_proj.weight", "BF16", vec![1, 4], bf16),
            ("model.layers.0.self_attn.rotary_emb.inv_freq", "I64", vec![1], vec![0; 8]),
        ],
    );
    let st = SafetensorsDir::open(&dir).unwrap();
    assert_eq!(st.config().hidden_size, 4);
    assert!(st.config().tie_word_embeddings, "no lm_head means tied");

    let t = st.tensor("token_embd.weight").unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::F32, vec![3, 4]));
    assert_eq!(t.to_f32().unwrap(), emb);
    let t = st.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(t.dtype, DType::F16);
    assert_eq!(t.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let t = st.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.dtype, DType::BF16);
    assert_eq!(t.to_f32().unwrap(), vec![0.5, -1.0, 2.0, 8.0]);
    assert!(st.has("blk.0.attn_q.weight") && !st.has("output.weight"));
    assert!(matches!(st.tensor("output.weight"), Err(ModelError::MissingTensor(_))));
    // Unmapped names stay reachable under their own name; unsupported dtypes are named.
    match st.tensor("model.layers.0.self_attn.rotary_emb.inv_freq") {
        Err(ModelError::UnsupportedTensorType { name, dtype }) => {
            assert!(name.contains("inv_freq") && dtype == "I64", "{name} {dtype}")
        }
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn safetensors_dir_errors() {
    let dir = common::temp_dir("st-err");
    assert!(matches!(SafetensorsDir::open(&dir), Err(ModelError::Io { path, .. }) if path.ends_with("config.json")));
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = SafetensorsDir::open(&dir).unwrap_err().to_string();
    assert!(err.contains("not valid JSON"), "{err}");
    std::fs::write(dir.join("config.json"), tiny_llama_config().to_string()).unwrap();
    let err = SafetensorsDir::open(&dir).unwrap_err().to_string();
    assert!(err.contains("no *.safetensors"), "{err}");
    std::fs::write(dir.join("model.safetensors"), [255u8; 16]).unwrap();
    assert!(matches!(SafetensorsDir::open(&dir), Err(ModelError::BadSafetensors { .. })));
    // A header whose data runs past the end of the file.
    write_safetensors(&dir.join("model.safetensors"), &[("lm_head.weight", "F32", vec![3, 4], vec![0; 48])]);
    let mut bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    bytes.truncate(bytes.len() - 4);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    assert!(matches!(SafetensorsDir::open(&dir), Err(ModelError::BadSafetensors { .. })));
    // The same tensor in two shards.
    let t = ("model.norm.weight", "F32", vec![1], vec![0u8; 4]);
    write_safetensors(&dir.join("model.safetensors"), std::slice::from_ref(&t));
    write_safetensors(&dir.join("model-2.safetensors"), &[t]);
    let err = SafetensorsDir::open(&dir).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tokenizer_from_hf_dir() {
    // Export the GGUF-built SmolLM2 tokenizer as tokenizer.json, then load it the HF way.
    let g = GgufFile::open(common::model(common::SMOLLM2)).unwrap();
    let from_gguf = Tokenizer::from_gguf(&g).unwrap();
    let dir = common::temp_dir("hf-tok");
    from_gguf.inner().save(dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "bos_token": "<|im_start|>",
            "eos_token": {"content": "<|im_end|>", "special": true},
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("generation_config.json"), json!({"eos_token_id": [2, 0]}).to_string()).unwrap();

    let hf = Tokenizer::from_hf_dir(&dir).unwrap();
    for text in ["The capital of France is", "<|im_start|>user\nHi<|im_end|>\n", " 12345 ünï\n\n\tx"] {
        assert_eq!(hf.encode(text, true).unwrap(), from_gguf.encode(text, true).unwrap(), "{text:?}");
        assert_eq!(hf.encode_plain(text, false).unwrap(), from_gguf.encode_plain(text, false).unwrap());
    }
    assert_eq!((hf.bos_token_id(), hf.eos_token_id()), (Some(1), Some(2)));
    assert_eq!((hf.bos_token(), hf.eos_token()), (Some("<|im_start|>"), Some("<|im_end|>")));
    assert!(!hf.add_bos());
    let eog = hf.eos_token_ids();
    assert_eq!(&eog[..2], &[2, 0]);
    assert!(hf.chat_template().unwrap().starts_with("{{ bos_token }}"));
    assert!(hf.is_special(2) && !hf.is_special(504));
    let ids = hf.encode("Hi<|im_end|>", false).unwrap();
    assert_eq!(hf.decode(&ids, true).unwrap(), "Hi");

    // Missing tokenizer.json and bad JSON are clear errors.
    let empty = common::temp_dir("hf-tok-empty");
    let err = Tokenizer::from_hf_dir(&empty).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::write(dir.join("tokenizer_config.json"), "{").unwrap();
    let err = Tokenizer::from_hf_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("JSON"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(empty);
}
