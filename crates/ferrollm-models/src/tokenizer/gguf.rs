//! Builds a [`Tokenizer`] from the vocabulary embedded in a GGUF file, mirroring llama.cpp's
//! `llama_vocab::impl::load` and its tokenizer sessions:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE with ranked merges and the pre-tokenizer
//!   regexes named by `tokenizer.ggml.pre` (see [`super::pretok`]);
//! - `"llama"`: SentencePiece BPE, where the highest-scoring adjacent pair is merged first,
//!   spaces become `▁`, a `▁` is prepended to every text run, and unknown characters fall back
//!   to `<0xXX>` byte tokens. It maps onto a Hugging Face BPE whose merges are ranked by the
//!   score of the merged piece (the same construction as transformers' `LlamaConverter`).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::special::{drop_end_if_harmony, CONTROL_TEXTS, EOG_TEXTS, FIM_EOG_TEXTS};
use super::{pretok, tok_err, Tokenizer};
use crate::gguf::GgufFile;
use crate::ModelError;

/// llama.cpp's `llama_token_type` values in `tokenizer.ggml.token_type`.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// SentencePiece's word-boundary marker, which stands for a space inside tokens.
const SPM_SPACE: &str = "\u{2581}";

/// What the model-specific builders hand back to the shared special-token logic.
struct Built {
    inner: tokenizers::Tokenizer,
    add_bos_default: bool,
    /// llama.cpp's BOS/EOS when the file names none.
    default_bos: u32,
    default_eos: u32,
}

fn err(msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(msg.into())
}

impl Tokenizer {
    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, ModelError> {
        let model = gguf.require_str("tokenizer.ggml.model")?;
        let tokens = gguf.require_str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(err(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let types = gguf.get_i32_array("tokenizer.ggml.token_type")?;
        if let Some(t) = &types {
            if t.len() < n {
                return Err(err(format!("tokenizer.ggml.token_type has {} entries for {n} tokens", t.len())));
            }
        }
        let type_of = |id: usize| types.as_ref().map_or(1, |t| t[id]);

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
                return Err(err(format!("token {t:?} appears twice (ids {prev} and {i})")));
            }
        }

        let Built { mut inner, add_bos_default, default_bos, default_eos } = match model {
            "gpt2" => build_bpe(gguf, &vocab)?,
            "llama" => build_spm(gguf, &texts, &vocab)?,
            other => {
                return Err(err(format!(
                    "tokenizer model '{other}' (tokenizer.ggml.model) is not supported; \
                     supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece)"
                )))
            }
        };

        // Special-token ids by key, falling back to llama.cpp's defaults; out-of-range ids
        // are dropped, as llama.cpp does with a warning.
        let in_range = |id: u32| (id as usize) < n;
        let id_key =
            |key: &str| -> Result<Option<u32>, ModelError> { Ok(gguf.get_u32(key)?.filter(|&id| in_range(id))) };
        let bos_id = gguf.get_u32("tokenizer.ggml.bos_token_id")?.unwrap_or(default_bos);
        let bos_id = Some(bos_id).filter(|&id| in_range(id));
        let eos_id = gguf.get_u32("tokenizer.ggml.eos_token_id")?.unwrap_or(default_eos);
        let eos_id = Some(eos_id).filter(|&id| in_range(id));

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

        // Added tokens are matched in the raw text, before any normalizer, like llama.cpp's
        // special-token partition.
        let added = |ids: &mut dyn Iterator<Item = u32>, special: bool| -> Vec<AddedToken> {
            ids.map(|i| AddedToken::from(texts[i as usize].clone(), special).normalized(false)).collect()
        };
        let mut special_sorted: Vec<u32> = special_ids.iter().copied().collect();
        special_sorted.sort_unstable();
        inner.add_special_tokens(&added(&mut special_sorted.into_iter(), true));
        inner.add_tokens(&added(&mut user_defined.into_iter(), false));

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

        let add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default);
        let add_eos = gguf.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos_id.is_none() {
            return Err(err("the vocabulary asks for BOS but has no valid BOS token"));
        }
        if add_eos && eos_id.is_none() {
            return Err(err("the vocabulary asks for EOS but has no valid EOS token"));
        }

        let tok = Tokenizer {
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
            // Added tokens all come from the token list, so ids are exactly 0..n.
            vocab_size: n,
        };
        // Encoding once exercises the whole pipeline, so a broken vocabulary surfaces at load
        // time rather than on the first request.
        tok.inner.encode_fast("a", false).map_err(tok_err)?;
        Ok(tok)
    }
}

fn hf_vocab(vocab: &HashMap<&str, u32>) -> Vocab {
    vocab.iter().map(|(&t, &i)| (t.to_string(), i)).collect()
}

/// Byte-level BPE (`"gpt2"`).
fn build_bpe(gguf: &GgufFile, vocab: &HashMap<&str, u32>) -> Result<Built, ModelError> {
    let merges = gguf.require_str_array("tokenizer.ggml.merges")?;
    let pre = gguf.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let spec = pretok::lookup(pre).ok_or_else(|| {
        err(format!(
            "pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported yet; supported include \
             default, gpt-2, llama-bpe/llama3, qwen2, smollm, starcoder, falcon, deepseek-coder"
        ))
    })?;
    let bpe = BPE::builder()
        .vocab_and_merges(hf_vocab(vocab), parse_merges(merges, vocab))
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| err(format!("cannot build the BPE model: {e}")))?;

    let mut pieces = Vec::with_capacity(spec.regexes.len() + 1);
    for re in spec.regexes {
        let split = Split::new(SplitPattern::Regex((*re).to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| err(format!("pre-tokenizer regex {re:?}: {e}")))?;
        pieces.push(PreTokenizerWrapper::Split(split));
    }
    pieces.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(pieces))));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, false, false))));
    // llama.cpp's defaults for "gpt2" vocabularies that name no BOS/EOS.
    Ok(Built { inner, add_bos_default: spec.add_bos, default_bos: 11, default_eos: 11 })
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

/// SentencePiece BPE (`"llama"`).
fn build_spm(gguf: &GgufFile, texts: &[String], vocab: &HashMap<&str, u32>) -> Result<Built, ModelError> {
    let scores = gguf.get_f32_array("tokenizer.ggml.scores")?;
    if let Some(s) = scores {
        if s.len() < texts.len() {
            return Err(err(format!("tokenizer.ggml.scores has {} entries for {} tokens", s.len(), texts.len())));
        }
    }
    let score = |id: usize| scores.map_or(0.0, |s| s[id]);

    // Every way to build a piece from two pieces, ranked by the merged piece's score (higher
    // first); within one piece, by the ids of its parts; otherwise in vocabulary order.
    let mut ranked: Vec<(f32, u32, u32)> = Vec::new();
    for (id, piece) in texts.iter().enumerate() {
        let mut local: Vec<(u32, u32)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| {
                let (l, r) = piece.split_at(i);
                Some((*vocab.get(l)?, *vocab.get(r)?))
            })
            .collect();
        local.sort_unstable();
        ranked.extend(local.into_iter().map(|(a, b)| (score(id), a, b)));
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0)); // stable: keeps the order above within a score
    let merges = ranked.into_iter().map(|(_, a, b)| (texts[a as usize].clone(), texts[b as usize].clone())).collect();

    let mut builder = BPE::builder().vocab_and_merges(hf_vocab(vocab), merges).byte_fallback(true);
    let unk = gguf.get_u32("tokenizer.ggml.unknown_token_id")?.unwrap_or(0);
    if let Some(t) = texts.get(unk as usize) {
        builder = builder.unk_token(t.clone());
    }
    let bpe = builder.build().map_err(|e| err(format!("cannot build the SentencePiece model: {e}")))?;

    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(|e| err(format!("normalizer: {e}")));
    let mut norm = Vec::new();
    // llama.cpp prefixes a space to every text run that starts the input or follows a special
    // token; added tokens are split off before the normalizer runs, so a per-run Prepend does
    // exactly that.
    let add_space_prefix = gguf.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    if add_space_prefix {
        norm.push(NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.to_string())));
    }
    norm.push(NormalizerWrapper::Replace(replace(" ", SPM_SPACE)?));

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(norm))));
    let mut dec = vec![
        DecoderWrapper::Replace(replace(SPM_SPACE, " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        dec.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(dec))));
    // llama.cpp's SentencePiece defaults: <s> = 1, </s> = 2, BOS added.
    Ok(Built { inner, add_bos_default: true, default_bos: 1, default_eos: 2 })
}
