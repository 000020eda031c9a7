//! Builds a [`Tokenizer`] from the vocabulary embedded in a GGUF file, mirroring llama.cpp's
//! `llama_vocab::impl::load` for `tokenizer.ggml.model = "gpt2"` (byte-level BPE).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::special::{drop_end_if_harmony, CONTROL_TEXTS, EOG_TEXTS, FIM_EOG_TEXTS};
use super::{pretok, tok_err, Tokenizer};
use crate::gguf::GgufFile;
use crate::ModelError;

/// llama.cpp's `llama_token_type` values in `tokenizer.ggml.token_type`.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// llama.cpp's BOS/EOS for "gpt2" vocabularies whose file names none (GPT-2's `<|endoftext|>`
/// is not at 11, but this is what llama.cpp does, and files without the keys are rare).
const GPT2_DEFAULT_BOS_EOS: u32 = 11;

impl Tokenizer {
    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, ModelError> {
        let model = gguf.require_str("tokenizer.ggml.model")?;
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(ModelError::Tokenizer(
                    "SentencePiece vocabularies (tokenizer.ggml.model = \"llama\") are not supported yet; \
                     load the model from a Hugging Face directory with tokenizer.json instead"
                        .into(),
                ))
            }
            other => return Err(ModelError::Tokenizer(format!(
                "tokenizer model '{other}' (tokenizer.ggml.model) is not supported; only \"gpt2\" (byte-level BPE) is"
            ))),
        }
        let tokens = gguf.require_str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(ModelError::Tokenizer(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let types = gguf.get_i32_array("tokenizer.ggml.token_type")?;
        if let Some(t) = &types {
            if t.len() < n {
                return Err(ModelError::Tokenizer(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    t.len()
                )));
            }
        }
        let type_of = |id: usize| types.as_ref().map_or(1, |t| t[id]);
        let merges = gguf.require_str_array("tokenizer.ggml.merges")?;
        let pre = gguf.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let spec = pretok::lookup(pre).ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported yet; \
                 supported include default, gpt-2, llama-bpe/llama3, qwen2, smollm, starcoder, falcon, deepseek-coder"
            ))
        })?;

        // Texts as llama.cpp stores them: empty entries get a placeholder so every id has a
        // distinct string.
        let texts: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t.clone() })
            .collect();
        let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            if let Some(prev) = vocab.insert(t, i as u32) {
                return Err(ModelError::Tokenizer(format!("token {t:?} appears twice (ids {prev} and {i})")));
            }
        }

        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab.iter().map(|(&t, &i)| (t.to_string(), i)).collect::<Vocab>(),
                parse_merges(merges, &vocab),
            )
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("cannot build the BPE model: {e}")))?;

        let mut pieces = Vec::with_capacity(spec.regexes.len() + 1);
        for re in spec.regexes {
            let split = Split::new(SplitPattern::Regex((*re).to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| ModelError::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))?;
            pieces.push(PreTokenizerWrapper::Split(split));
        }
        pieces.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(pieces))));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, false, false))));

        // Special-token ids, by key, falling back to llama.cpp's defaults.
        let id_key =
            |key: &str| -> Result<Option<u32>, ModelError> { Ok(gguf.get_u32(key)?.filter(|&id| (id as usize) < n)) };
        let default_id = (GPT2_DEFAULT_BOS_EOS as usize) < n;
        let bos_id = match gguf.get_u32("tokenizer.ggml.bos_token_id")? {
            Some(id) => Some(id).filter(|&id| (id as usize) < n),
            None => default_id.then_some(GPT2_DEFAULT_BOS_EOS),
        };
        let eos_id = match gguf.get_u32("tokenizer.ggml.eos_token_id")? {
            Some(id) => Some(id).filter(|&id| (id as usize) < n),
            None => default_id.then_some(GPT2_DEFAULT_BOS_EOS),
        };

        // Control tokens: type 3 (and unknown, type 2), plus the texts llama.cpp forces to
        // control. User-defined tokens (type 4) are matched in text but are not special.
        let by_text = |list: &[&str]| -> Vec<u32> { list.iter().filter_map(|t| vocab.get(t).copied()).collect() };
        let mut special_ids: HashSet<u32> =
            (0..n).filter(|&i| matches!(type_of(i), TYPE_CONTROL | TYPE_UNKNOWN)).map(|i| i as u32).collect();
        special_ids.extend(by_text(EOG_TEXTS));
        special_ids.extend(by_text(FIM_EOG_TEXTS));
        special_ids.extend(by_text(CONTROL_TEXTS));
        let user_defined: Vec<u32> = (0..n)
            .filter(|&i| type_of(i) == TYPE_USER_DEFINED)
            .map(|i| i as u32)
            .filter(|i| !special_ids.contains(i))
            .collect();

        let mut special_sorted: Vec<u32> = special_ids.iter().copied().collect();
        special_sorted.sort_unstable();
        let added: Vec<AddedToken> =
            special_sorted.iter().map(|&i| AddedToken::from(texts[i as usize].clone(), true)).collect();
        inner.add_special_tokens(&added);
        let added: Vec<AddedToken> =
            user_defined.iter().map(|&i| AddedToken::from(texts[i as usize].clone(), false)).collect();
        inner.add_tokens(&added);

        // End of generation: EOS, EOT/EOM and FIM pad/repo/sep by key, and llama.cpp's texts.
        let mut eog: Vec<u32> = Vec::new();
        eog.extend(eos_id);
        for key in [
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ] {
            eog.extend(id_key(key)?);
        }
        let mut by_text_eog = by_text(EOG_TEXTS);
        by_text_eog.extend(by_text(FIM_EOG_TEXTS));
        by_text_eog.sort_unstable();
        eog.extend(by_text_eog);
        let mut seen = HashSet::new();
        eog.retain(|id| seen.insert(*id));
        drop_end_if_harmony(&mut eog, |id| texts.get(id as usize).cloned());

        let add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(spec.add_bos);
        let add_eos = gguf.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos_id.is_none() {
            return Err(ModelError::Tokenizer("the vocabulary asks for BOS but has no BOS token".into()));
        }

        check_pipeline(Tokenizer {
            inner,
            plain: OnceLock::new(),
            bos_id,
            eos_id,
            eog_ids: eog,
            special_ids,
            add_bos,
            add_eos,
            manual_bos_eos: true,
            chat_template: gguf.get_str("tokenizer.chat_template")?.map(str::to_owned),
            bos_token: bos_id.map(|i| texts[i as usize].clone()),
            eos_token: eos_id.map(|i| texts[i as usize].clone()),
        })
    }
}

/// Merges as `(left, right)` pairs, split the way llama.cpp does (at the first space after
/// the first byte, so a merge may start with a space token). Pairs whose parts or result are
/// not in the vocabulary cannot apply in llama.cpp either and are dropped, as are repeats
/// (llama.cpp keeps the first rank).
fn parse_merges(merges: &[String], vocab: &HashMap<&str, u32>) -> Vec<(String, String)> {
    let mut seen = HashSet::with_capacity(merges.len());
    let mut out = Vec::with_capacity(merges.len());
    for m in merges {
        let Some(pos) = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        if a.is_empty() || b.is_empty() || !vocab.contains_key(a) || !vocab.contains_key(b) {
            continue;
        }
        let joined = format!("{a}{b}");
        if !vocab.contains_key(joined.as_str()) || !seen.insert((a, b)) {
            continue;
        }
        out.push((a.to_string(), b.to_string()));
    }
    out
}

fn check_pipeline(t: Tokenizer) -> Result<Tokenizer, ModelError> {
    // Encoding an empty string exercises the whole pipeline once, so a broken regex or model
    // surfaces at load time rather than on the first request.
    t.inner.encode_fast("", false).map_err(tok_err)?;
    Ok(t)
}
