//! Cuts a GGUF model down to its first N transformer blocks: a draft model for speculative
//! decoding with exactly the target's vocabulary, tokenizer and embeddings.
//!
//! Every tensor outside `blk.{i}.` for `i >= keep` is copied byte for byte (embeddings, output
//! norm and head, the kept blocks), every metadata key is copied (tokenizer included), and
//! `<arch>.block_count` becomes `keep`. The cut model computes exactly what the full model's
//! first `keep` blocks followed by its final norm and head compute.

use std::path::Path;

use super::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use crate::ModelError;

/// What [`cut_layers`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutSummary {
    pub architecture: String,
    pub blocks_before: usize,
    pub blocks_after: usize,
    pub tensors_kept: usize,
    pub tensors_dropped: usize,
    pub bytes_written: usize,
}

/// The block index of a `blk.{i}.…` tensor name, `None` for any other tensor.
fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Builds the cut image of `src` in memory; see the module docs.
pub fn cut_layers_image(src: &GgufFile, keep: usize) -> Result<(GgufWriter, CutSummary), ModelError> {
    let bad = |reason: String| ModelError::BadGguf { path: src.path().to_string(), reason };
    let arch = src.architecture()?.to_string();
    let key = format!("{arch}.block_count");
    let blocks = src.require_usize(&key)?;
    if keep == 0 || keep >= blocks {
        return Err(ModelError::InvalidRequest(format!(
            "--keep must be between 1 and {} (the model has {blocks} blocks), got {keep}",
            blocks.saturating_sub(1)
        )));
    }
    let mut w = GgufWriter::new();
    w.version(src.version());
    for (k, v) in src.metadata() {
        if k == super::parse::ALIGNMENT_KEY {
            let a = src.alignment();
            w.alignment(u32::try_from(a).map_err(|_| bad(format!("alignment {a} does not fit in u32")))?);
        } else if k == key {
            // Keep the key's own integer type.
            let n = keep as u64;
            let v = match v {
                MetadataValue::U32(_) => MetadataValue::U32(n as u32),
                MetadataValue::I32(_) => MetadataValue::I32(n as i32),
                MetadataValue::U64(_) => MetadataValue::U64(n),
                MetadataValue::I64(_) => MetadataValue::I64(n as i64),
                MetadataValue::U16(_) => MetadataValue::U16(n as u16),
                MetadataValue::I16(_) => MetadataValue::I16(n as i16),
                _ => MetadataValue::U32(n as u32),
            };
            w.add(k, v);
        } else if k.starts_with(&format!("{arch}.")) && per_block_array(v, blocks) {
            // Per-block hyperparameters (some architectures store head counts per block).
            w.add(k, truncate_array(v, keep));
        } else {
            w.add(k, v.clone());
        }
    }
    let (mut kept, mut dropped, mut bytes) = (0, 0, 0);
    for info in src.tensors() {
        if block_index(&info.name).is_some_and(|i| i >= keep) {
            dropped += 1;
            continue;
        }
        let data = src.tensor_bytes(info).ok_or_else(|| bad(format!("tensor '{}' has no data", info.name)))?;
        bytes += data.len();
        w.add_tensor(&info.name, &info.shape, info.ggml_type, data.to_vec());
        kept += 1;
    }
    let summary = CutSummary {
        architecture: arch,
        blocks_before: blocks,
        blocks_after: keep,
        tensors_kept: kept,
        tensors_dropped: dropped,
        bytes_written: bytes,
    };
    Ok((w, summary))
}

fn per_block_array(v: &MetadataValue, blocks: usize) -> bool {
    matches!(v, MetadataValue::Array(a) if a.len() == blocks && !matches!(a, MetadataArray::String(_) | MetadataArray::Array(_)))
}

fn truncate_array(v: &MetadataValue, keep: usize) -> MetadataValue {
    let MetadataValue::Array(a) = v else { return v.clone() };
    fn t<T: Clone>(x: &[T], keep: usize) -> Vec<T> {
        x[..keep].to_vec()
    }
    MetadataValue::Array(match a {
        MetadataArray::U8(x) => MetadataArray::U8(t(x, keep)),
        MetadataArray::I8(x) => MetadataArray::I8(t(x, keep)),
        MetadataArray::U16(x) => MetadataArray::U16(t(x, keep)),
        MetadataArray::I16(x) => MetadataArray::I16(t(x, keep)),
        MetadataArray::U32(x) => MetadataArray::U32(t(x, keep)),
        MetadataArray::I32(x) => MetadataArray::I32(t(x, keep)),
        MetadataArray::U64(x) => MetadataArray::U64(t(x, keep)),
        MetadataArray::I64(x) => MetadataArray::I64(t(x, keep)),
        MetadataArray::F32(x) => MetadataArray::F32(t(x, keep)),
        MetadataArray::F64(x) => MetadataArray::F64(t(x, keep)),
        MetadataArray::Bool(x) => MetadataArray::Bool(t(x, keep)),
        other => other.clone(),
    })
}

/// Reads `input`, keeps its first `keep` blocks and writes the result to `output`.
pub fn cut_layers(input: &Path, output: &Path, keep: usize) -> Result<CutSummary, ModelError> {
    let src = GgufFile::open(input)?;
    let (w, summary) = cut_layers_image(&src, keep)?;
    if input.canonicalize().ok().is_some_and(|a| output.canonicalize().ok().is_some_and(|b| a == b)) {
        return Err(ModelError::InvalidRequest(format!("{} would overwrite the input", output.display())));
    }
    w.write(output).map_err(|source| ModelError::Write { path: output.display().to_string(), source })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_indices() {
        assert_eq!(block_index("blk.0.attn_q.weight"), Some(0));
        assert_eq!(block_index("blk.29.ffn_down.weight"), Some(29));
        assert_eq!(block_index("token_embd.weight"), None);
        assert_eq!(block_index("output_norm.weight"), None);
        assert_eq!(block_index("blk.x.attn_q.weight"), None);
    }

    fn tiny(blocks: u32) -> GgufFile {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", "llama").add_u32("llama.block_count", blocks);
        w.add(
            "llama.attention.head_count",
            MetadataValue::Array(MetadataArray::U32((0..blocks).map(|i| i + 1).collect())),
        );
        w.add_str_array("tokenizer.ggml.tokens", &["a", "b"]);
        w.add_f32_tensor("token_embd.weight", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        for i in 0..blocks {
            w.add_f32_tensor(&format!("blk.{i}.attn_norm.weight"), &[2], &[i as f32, 0.5]);
        }
        w.add_f32_tensor("output_norm.weight", &[2], &[1.0, 1.0]);
        GgufFile::from_bytes(w.to_bytes()).unwrap()
    }

    #[test]
    fn keeps_first_blocks_and_everything_else() {
        let src = tiny(5);
        let (w, s) = cut_layers_image(&src, 2).unwrap();
        assert_eq!((s.blocks_before, s.blocks_after, s.tensors_kept, s.tensors_dropped), (5, 2, 4, 3));
        let cut = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(cut.get_u32("llama.block_count").unwrap(), Some(2));
        assert_eq!(cut.get_u32_array("llama.attention.head_count").unwrap(), Some(vec![1, 2]));
        assert_eq!(cut.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap(), ["a", "b"]);
        let names: Vec<&str> = cut.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["token_embd.weight", "blk.0.attn_norm.weight", "blk.1.attn_norm.weight", "output_norm.weight"]
        );
        for t in cut.tensors() {
            assert_eq!(cut.tensor_bytes(t), src.tensor_bytes(src.tensor_info(&t.name).unwrap()), "{}", t.name);
        }
    }

    #[test]
    fn bad_keep_is_refused() {
        let src = tiny(3);
        for keep in [0, 3, 7] {
            let err = cut_layers_image(&src, keep).err().unwrap().to_string();
            assert!(err.contains("--keep must be between 1 and 2 (the model has 3 blocks)"), "{err}");
        }
    }
}
