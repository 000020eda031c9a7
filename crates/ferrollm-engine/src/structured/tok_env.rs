//! The tokenizer as llguidance sees it: the bytes of every token, in a trie.

use std::sync::Arc;

use ferrollm_models::Tokenizer;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

struct FerroTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
    /// Byte-level BPE tokenizes any fragment the way it would inside a longer text, which
    /// jump-forward needs; SentencePiece's dummy space prefix does not.
    canonical: bool,
}

impl TokenizerEnv for FerroTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer.encode_plain(text, false).unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.canonical
    }
}

/// Builds the token trie for `tokenizer` over the model's `vocab_size` logits (ids the
/// tokenizer does not know, a padded vocabulary's tail, are never allowed). Every
/// end-of-generation token ends a grammar.
pub fn build_tok_env(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<TokEnv, String> {
    let json = tokenizer.inner().to_string(false).map_err(|e| format!("cannot serialize the tokenizer: {e}"))?;
    let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("tokenizer JSON: {e}"))?;
    let canonical = value["decoder"]["type"].as_str() == Some("ByteLevel");
    // llguidance asserts on vocabularies it does not expect; report that as an error instead.
    let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&value))
        .map_err(|_| "llguidance cannot read this tokenizer's vocabulary".to_string())?
        .map_err(|e| format!("cannot read token bytes: {e}"))?;
    let mut words = words;
    if words.len() > vocab_size {
        return Err(format!("the tokenizer has {} tokens but the model only {vocab_size} logits", words.len()));
    }
    words.resize(vocab_size, Vec::new());
    let eos = tokenizer.eos_token_ids();
    let Some(&first_eos) = eos.first() else {
        return Err("the tokenizer has no end-of-sequence token to finish a grammar with".into());
    };
    let mut info = TokRxInfo::new(vocab_size as u32, first_eos);
    info.tok_bos = tokenizer.bos_token_id();
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
    Ok(Arc::new(FerroTokEnv { trie, tokenizer, canonical }))
}
