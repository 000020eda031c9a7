//! Text to token ids and back, for GGUF vocabularies and Hugging Face `tokenizer.json`.
//!
//! Both sources end up as a `tokenizers::Tokenizer`. For GGUF we assemble one from the
//! embedded vocabulary so that it tokenizes exactly as llama.cpp does (same pre-tokenizer
//! regexes, same merges, same special-token handling); the tests hold it against llama.cpp's
//! own test vectors.

mod gguf;
mod hf;
mod pretok;
mod special;

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::ModelError;

pub(crate) fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// A model's tokenizer plus the special-token facts the engine and chat templates need.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` with special-token splitting off, built on first use by [`Tokenizer::encode_plain`].
    plain: OnceLock<tokenizers::Tokenizer>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    /// Every token that ends generation, `eos_id` first.
    eog_ids: Vec<u32>,
    /// Control tokens: parsed from text as one token, hidden by `skip_special_tokens`.
    special_ids: HashSet<u32>,
    add_bos: bool,
    add_eos: bool,
    /// GGUF: we add BOS/EOS ourselves. Hugging Face: tokenizer.json's post-processor does.
    manual_bos_eos: bool,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Highest id + 1, computed once: `tokenizers` rebuilds a full vocabulary map to answer
    /// `get_vocab_size(true)`, far too slow for per-token decoding.
    vocab_size: usize,
}

/// Highest token id + 1, added tokens included.
pub(crate) fn id_count(inner: &tokenizers::Tokenizer) -> usize {
    inner.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1)
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos_id)
            .field("eos", &self.eog_ids)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Token ids for `text`. Special tokens spelled out in `text` (`<|im_start|>`, ...) become
    /// their single ids, which is what rendered chat templates need. `add_special_tokens` adds
    /// BOS (and EOS) where the model asks for it; see [`Tokenizer::add_bos`].
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ModelError> {
        self.encode_impl(&self.inner, text, add_special_tokens)
    }

    /// Like [`Tokenizer::encode`], but control-token text is tokenized as ordinary text
    /// (llama.cpp's `parse_special = false`). Use it for untrusted text that must not be able
    /// to inject `<|im_end|>` and the like. User-defined added tokens still match.
    pub fn encode_plain(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ModelError> {
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        self.encode_impl(plain, text, add_special_tokens)
    }

    fn encode_impl(
        &self,
        tk: &tokenizers::Tokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, ModelError> {
        if !self.manual_bos_eos {
            return Ok(tk.encode_fast(text, add_special_tokens).map_err(tok_err)?.get_ids().to_vec());
        }
        let enc = tk.encode_fast(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special_tokens && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special_tokens && self.add_eos {
            ids.extend(self.eos_id);
        }
        Ok(ids)
    }

    /// Text for `ids`; with `skip_special_tokens`, control tokens are left out. Ids outside
    /// the vocabulary are an error rather than silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ModelError> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(ModelError::Tokenizer(format!("token id {bad} is outside the vocabulary of {n}")));
        }
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The model's EOS token, without the other end-of-generation tokens.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Every token that should stop generation: EOS plus tokens such as `<|im_end|>`,
    /// `<|eot_id|>` or `<|endoftext|>` (llama.cpp's end-of-generation set). EOS comes first.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eog_ids.clone()
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids.contains(&id)
    }

    /// Whether `id` is a control token (hidden when decoding with `skip_special_tokens`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The id of a token given its vocabulary text (byte-level form, e.g. `"Ġthe"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary text of a token (byte-level form, e.g. `"Ġthe"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The Jinja chat template shipped with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// BOS text, for chat templates that reference `bos_token`.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// EOS text, for chat templates that reference `eos_token`.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Whether `encode(_, true)` prepends BOS. When a chat template already writes
    /// `bos_token`, encode its output with `add_special_tokens = false` to avoid a double BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The underlying Hugging Face tokenizer, for streaming decode and other extras.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
