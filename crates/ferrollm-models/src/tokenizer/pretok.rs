//! Pre-tokenizer regexes per `tokenizer.ggml.pre`, copied from llama.cpp's `llama-vocab.cpp`.
//!
//! llama.cpp applies the expressions in order, each one splitting every piece produced by the
//! previous one and keeping both the matches and the text between them. That is exactly a
//! sequence of Hugging Face `Split` pre-tokenizers with `Isolated` behaviour, which is how
//! [`super::gguf`] uses this table. Where llama.cpp rewrote a regex for `std::regex` (case
//! folding, lookaheads), the rewritten form is kept: Oniguruma accepts it and it means the same.

/// How one `tokenizer.ggml.pre` value tokenizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreSpec {
    pub regexes: &'static [&'static str],
    /// Use a whole pre-token as-is when it is in the vocabulary, skipping merges (Llama 3).
    pub ignore_merges: bool,
    /// llama.cpp's default for adding BOS, before `tokenizer.ggml.add_bos_token` overrides it.
    pub add_bos: bool,
}

const GPT2: &str = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const LLAMA3: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN35: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const TEKKEN: &str = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const GPT4O: &str = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const BLOOM: &str = " ?[^(\\s|.,!?…。，、।۔،)]+";

const fn spec(regexes: &'static [&'static str]) -> PreSpec {
    PreSpec { regexes, ignore_merges: false, add_bos: false }
}

/// The spec for a `tokenizer.ggml.pre` value (missing means `"default"`), or `None` for a
/// pre-tokenizer we have not ported.
pub(crate) fn lookup(pre: &str) -> Option<PreSpec> {
    Some(match pre {
        "default" => spec(&["[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]"]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => PreSpec { regexes: &[LLAMA3], ignore_merges: true, add_bos: true },
        "dbrx" | "smaug-bpe" => spec(&[LLAMA3]),
        "deepseek-coder" => spec(&["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"]),
        "falcon" => spec(&[
            "[\\p{P}\\$\\+<=>\\^~\\|`]+",
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
            "[0-9][0-9][0-9]",
        ]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => {
            spec(&[GPT2])
        }
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            spec(&["\\p{N}", GPT2])
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" => spec(&[QWEN2]),
        "qwen35" => spec(&[QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => spec(&[BLOOM]),
        "viking" => spec(&[BLOOM, "\\p{N}"]),
        "tekken" => PreSpec { regexes: &[TEKKEN], ignore_merges: true, add_bos: true },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" => spec(&[GPT4O]),
        _ => return None,
    })
}
