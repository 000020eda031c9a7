//! Builds a [`Tokenizer`] from a Hugging Face model directory: `tokenizer.json` for the
//! tokenizer itself, `tokenizer_config.json` for the chat template and BOS/EOS names, and
//! `generation_config.json` for extra stop ids (Llama 3 lists several there).

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use super::special::{drop_end_if_harmony, EOG_TEXTS};
use super::{tok_err, Tokenizer};
use crate::ModelError;

fn read_json(path: &Path, required: bool) -> Result<Option<Value>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(source) => return Err(ModelError::Io { path: path.display().to_string(), source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Tokenizer(format!("{} is not valid JSON: {e}", path.display())))
}

/// A token named in tokenizer_config.json: a string, or an AddedToken object with `content`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` from which we take "default".
fn chat_template(config: Option<&Value>, dir: &Path) -> Result<Option<String>, ModelError> {
    match config.and_then(|c| c.get("chat_template")) {
        Some(Value::String(s)) => return Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |name: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(name));
            if let Some(t) = named("default").or_else(|| list.first()) {
                return Ok(t.get("template").and_then(Value::as_str).map(str::to_owned));
            }
        }
        _ => {}
    }
    // Newer repositories ship the template as its own file.
    let path = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::Io { path: path.display().to_string(), source }),
    }
}

impl Tokenizer {
    /// The tokenizer of a Hugging Face model directory (`tokenizer.json` is required).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Tokenizer, ModelError> {
        let dir = dir.as_ref();
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Err(ModelError::Tokenizer(format!(
                "{} not found; ferrollm needs the fast-tokenizer file (tokenizer.json)",
                tj.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| ModelError::Tokenizer(format!("cannot load {}: {e}", tj.display())))?;
        let config = read_json(&dir.join("tokenizer_config.json"), false)?;
        let gen_config = read_json(&dir.join("generation_config.json"), false)?;

        let bos_token = token_text(config.as_ref().and_then(|c| c.get("bos_token")));
        let eos_token = token_text(config.as_ref().and_then(|c| c.get("eos_token")));
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let eos_id = eos_token.as_deref().and_then(|t| inner.token_to_id(t));

        let added = inner.get_added_tokens_decoder();
        let special_ids: HashSet<u32> = added.iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();

        let mut eog: Vec<u32> = Vec::new();
        eog.extend(eos_id);
        if let Some(v) = gen_config.as_ref().and_then(|c| c.get("eos_token_id")) {
            let ids: Vec<u64> = match v {
                Value::Number(n) => n.as_u64().into_iter().collect(),
                Value::Array(a) => a.iter().filter_map(Value::as_u64).collect(),
                _ => Vec::new(),
            };
            eog.extend(ids.into_iter().filter_map(|id| u32::try_from(id).ok()));
        }
        let mut by_text: Vec<u32> =
            EOG_TEXTS.iter().filter_map(|t| inner.token_to_id(t)).filter(|id| special_ids.contains(id)).collect();
        by_text.sort_unstable();
        eog.extend(by_text);
        let n = super::id_count(&inner);
        let mut seen = HashSet::new();
        eog.retain(|&id| (id as usize) < n && seen.insert(id));
        drop_end_if_harmony(&mut eog, |id| inner.id_to_token(id));

        // tokenizer.json's post-processor decides what `encode(_, true)` adds; probe it so
        // `add_bos()` reports what actually happens.
        let probe = inner.encode_fast("", true).map_err(tok_err)?;
        let add_bos = bos_id.is_some() && probe.get_ids().first().copied() == bos_id;
        let add_eos = eos_id.is_some() && probe.get_ids().last().copied() == eos_id;

        Ok(Tokenizer {
            chat_template: chat_template(config.as_ref(), dir)?,
            inner,
            plain: OnceLock::new(),
            bos_id,
            eos_id,
            eog_ids: eog,
            special_ids,
            add_bos,
            add_eos,
            manual_bos_eos: false,
            bos_token,
            eos_token,
            vocab_size: n,
        })
    }
}
