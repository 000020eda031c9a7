//! GGUF tokenization must give exactly llama.cpp's ids. The vectors are llama.cpp's own
//! (`models/ggml-vocab-*.gguf{,.inp,.out}`, checked by its `tests/test-tokenizer-0.cpp`),
//! fetched by `scripts/fetch-test-data.sh`.

mod common;

use ferrollm_models::gguf::GgufFile;
use ferrollm_models::Tokenizer;

/// Parses llama.cpp's test files: inputs separated by `\n__ggml_vocab_test__\n`, outputs one
/// line of space-separated ids per input (test-tokenizer-0.cpp's `read_tests`).
fn read_vectors(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read(common::testdata(&format!("ggml-vocab-{vocab}.gguf.inp"))).unwrap();
    let inp = String::from_utf8(inp).expect("test input is UTF-8");
    let out = std::fs::read_to_string(common::testdata(&format!("ggml-vocab-{vocab}.gguf.out"))).unwrap();

    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(i) => {
                inputs.push(rest[..i].to_string());
                rest = &rest[i + sep.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|t| t.parse().expect("token id")).collect()).collect();
    assert_eq!(inputs.len(), outputs.len(), "{vocab}: .inp and .out disagree on the number of tests");
    assert!(inputs.len() > 20, "{vocab}: suspiciously few tests");
    inputs.into_iter().zip(outputs).collect()
}

fn load(vocab: &str) -> Tokenizer {
    let g = GgufFile::open(common::testdata(&format!("ggml-vocab-{vocab}.gguf"))).unwrap();
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{vocab}: {e}"))
}

/// Every vector, with `add_special = false, parse_special = false` as llama.cpp's test runs
/// them; all mismatches are reported together. Also checks that decoding gives the input back.
fn check_vocab(vocab: &str) {
    let tok = load(vocab);
    let mut failures = Vec::new();
    let cases = read_vectors(vocab);
    for (text, want) in &cases {
        let got = tok.encode_plain(text, false).unwrap();
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
            continue;
        }
        let back = tok.decode(&got, false).unwrap();
        if &back != text {
            failures.push(format!("  {text:?} decoded to {back:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{vocab}: {} of {} cases differ from llama.cpp:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn qwen2_matches_llama_cpp() {
    check_vocab("qwen2");
}

#[test]
fn gpt2_matches_llama_cpp() {
    check_vocab("gpt-2");
}

#[test]
fn llama_bpe_matches_llama_cpp() {
    check_vocab("llama-bpe");
}

#[test]
fn starcoder_matches_llama_cpp() {
    // Same pre-tokenizer as SmolLM2 ("smollm").
    check_vocab("starcoder");
}

#[test]
fn refact_matches_llama_cpp() {
    check_vocab("refact");
}

#[test]
fn mpt_matches_llama_cpp() {
    check_vocab("mpt");
}

#[test]
fn command_r_matches_llama_cpp() {
    check_vocab("command-r");
}

#[test]
fn deepseek_coder_matches_llama_cpp() {
    check_vocab("deepseek-coder");
}

#[test]
fn falcon_matches_llama_cpp() {
    check_vocab("falcon");
}

#[test]
fn llama_bpe_adds_bos_and_parses_special_tokens() {
    let tok = load("llama-bpe");
    assert!(tok.add_bos());
    let bos = tok.bos_token_id().unwrap();
    assert_eq!(tok.bos_token(), Some("<|begin_of_text|>"));
    let ids = tok.encode("Hello", true).unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(&ids[1..], tok.encode("Hello", false).unwrap().as_slice());
    // Control-token text: one id with `encode`, plain text with `encode_plain`.
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    assert_eq!(tok.encode("<|eot_id|>", false).unwrap(), vec![eot]);
    assert!(tok.encode_plain("<|eot_id|>", false).unwrap().len() > 1);
    assert!(tok.is_special(eot));
    assert!(tok.eos_token_ids().contains(&eot));
    // Skipping special tokens hides them when decoding.
    let ids = tok.encode("<|eot_id|>Hi", false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "Hi");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|eot_id|>Hi");
    assert!(tok.decode(&[u32::MAX], false).is_err());
}

#[test]
fn qwen2_special_tokens() {
    let tok = load("qwen2");
    assert!(!tok.add_bos());
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    let eog = tok.eos_token_ids();
    assert!(eog.contains(&im_end) && eog.contains(&eot), "{eog:?}");
    assert_eq!(
        tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap()[0],
        tok.token_to_id("<|im_start|>").unwrap()
    );
}

#[test]
fn unknown_pre_tokenizer_is_named_in_the_error() {
    use ferrollm_models::gguf::GgufWriter;
    let mut w = GgufWriter::new();
    w.add_str("tokenizer.ggml.model", "gpt2")
        .add_str("tokenizer.ggml.pre", "no-such-pre")
        .add_str_array("tokenizer.ggml.tokens", &["a", "b"])
        .add_str_array::<&str>("tokenizer.ggml.merges", &[]);
    let g = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let err = Tokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(err.contains("no-such-pre"), "{err}");
}

#[test]
fn llama_spm_matches_llama_cpp() {
    check_vocab("llama-spm");
}

#[test]
fn phi3_spm_matches_llama_cpp() {
    check_vocab("phi-3");
}

#[test]
fn llama_spm_bos_and_special_tokens() {
    let tok = load("llama-spm");
    assert!(tok.add_bos());
    assert_eq!((tok.bos_token(), tok.eos_token()), (Some("<s>"), Some("</s>")));
    let ids = tok.encode("Hello world", true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[1..], tok.encode("Hello world", false).unwrap().as_slice());
    assert_eq!(tok.decode(&ids, true).unwrap(), "Hello world");
    // A special token in text is one id, and the text after it gets its own space prefix,
    // as in llama.cpp.
    let with = tok.encode("</s>Hi", false).unwrap();
    assert_eq!(with[0], 2);
    assert_eq!(&with[1..], tok.encode("Hi", false).unwrap().as_slice());
    assert!(tok.eos_token_ids().contains(&2));
}
