//! Parses a GGUF v2/v3 header (metadata and tensor infos) out of a byte slice.
//!
//! Layout (ggml/docs/gguf.md): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor infos, padding to `general.alignment`, tensor data.
//! All integers are little-endian. Version 1 (u32 counts) predates every model we can run.

use std::collections::HashMap;

use ferrollm_kernels::DType;

use super::reader::{ReadResult, Reader};
use super::value::{read_value, MetadataValue};
use super::GgufTensorInfo;

pub(crate) const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// ggml's `GGUF_DEFAULT_ALIGNMENT`, used when `general.alignment` is absent.
pub(crate) const DEFAULT_ALIGNMENT: usize = 32;
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";

pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, MetadataValue)>,
    pub meta_index: HashMap<String, usize>,
    pub tensors: Vec<GgufTensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub alignment: usize,
    pub data_offset: usize,
}

pub(crate) fn parse(data: &[u8]) -> ReadResult<Parsed> {
    let mut r = Reader::new(data);
    let magic = r.bytes(4).map_err(|_| format!("file is {} bytes, too short for a GGUF header", data.len()))?;
    if magic != MAGIC {
        return Err(format!("bad magic {magic:02x?}, expected \"GGUF\""));
    }
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported; re-convert the model with a current llama.cpp".into()),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err("big-endian GGUF files are not supported".into());
        }
        v => return Err(format!("unsupported GGUF version {v} (supported: 2, 3)")),
    }
    // Minimum sizes: a tensor info is name length (8) + n_dims (4) + type (4) + offset (8);
    // a key/value pair is key length (8) + type (4) + at least one value byte.
    let n_tensors = r.count(24, "tensor count")?;
    let n_kv = r.count(13, "metadata count")?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut meta_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.strict_string("metadata key").map_err(|e| format!("metadata entry {i}: {e}"))?;
        let ty = r.u32().map_err(|e| format!("metadata '{key}': {e}"))?;
        let value = read_value(&mut r, ty).map_err(|e| format!("metadata '{key}': {e}"))?;
        if meta_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(format!("duplicate metadata key '{key}'"));
        }
        metadata.push((key, value));
    }

    let alignment = match meta_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i128() {
            Some(a) if a > 0 && (a as u128).is_power_of_two() && a <= u32::MAX as i128 => a as usize,
            _ => return Err(format!("{ALIGNMENT_KEY} must be a power of two, got {v:?}")),
        },
    };

    let mut infos = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.strict_string("tensor name").map_err(|e| format!("tensor info {i}: {e}"))?;
        let info = read_tensor_info(&mut r, name.clone()).map_err(|e| format!("tensor '{name}': {e}"))?;
        infos.push(info);
    }

    let data_offset = r.pos().checked_next_multiple_of(alignment).ok_or_else(|| "data offset overflows".to_string())?;

    let mut tensor_index = HashMap::with_capacity(infos.len());
    for (i, t) in infos.iter_mut().enumerate() {
        if tensor_index.insert(t.name.clone(), i).is_some() {
            return Err(format!("duplicate tensor name '{}'", t.name));
        }
        locate(t, data_offset, alignment, data.len()).map_err(|e| format!("tensor '{}': {e}", t.name))?;
    }

    Ok(Parsed { version, metadata, meta_index, tensors: infos, tensor_index, alignment, data_offset })
}

fn read_tensor_info(r: &mut Reader<'_>, name: String) -> ReadResult<GgufTensorInfo> {
    let n_dims = r.u32()?;
    if n_dims > MAX_DIMS {
        return Err(format!("{n_dims} dimensions, at most {MAX_DIMS} allowed"));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = r.u64()?;
        // ggml stores ne as int64_t.
        if d > i64::MAX as u64 {
            return Err(format!("dimension {d} is out of range"));
        }
        dims.push(d);
    }
    let ggml_type = r.u32()?;
    let offset = r.u64()?;

    let mut n_elements: u64 = 1;
    for &d in &dims {
        n_elements = n_elements.checked_mul(d).filter(|&n| n <= i64::MAX as u64).ok_or("element count overflows")?;
    }
    let shape = dims
        .iter()
        .rev()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} does not fit in memory")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GgufTensorInfo { name, shape, dims, ggml_type, offset, n_elements, data_range: None })
}

/// `(block size, bytes per block)` for every `ggml_type` id (gguf-py's `GGML_QUANT_SIZES`).
/// Sizing types we cannot compute with still lets us check that their data lies in the file.
fn ggml_type_size(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        0 => (1, 4),
        1 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 40),
        10 => (256, 84),
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        16 => (256, 66),
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        20 => (32, 18),
        21 => (256, 110),
        22 => (256, 82),
        23 => (256, 136),
        24 => (1, 1),
        25 => (1, 2),
        26 => (1, 4),
        27 => (1, 8),
        28 => (1, 8),
        29 => (256, 56),
        30 => (1, 2),
        34 => (256, 54),
        35 => (256, 66),
        39 => (32, 17),
        40 => (64, 36),
        41 => (128, 18),
        _ => return None,
    })
}

/// Checks that a tensor's data lies inside the file, and records where.
fn locate(t: &mut GgufTensorInfo, data_offset: usize, alignment: usize, file_len: usize) -> ReadResult<()> {
    if !t.offset.is_multiple_of(alignment as u64) {
        return Err(format!("data offset {} is not a multiple of the alignment {alignment}", t.offset));
    }
    let (block, type_size) =
        ggml_type_size(t.ggml_type).ok_or_else(|| format!("unknown ggml type id {}", t.ggml_type))?;
    let ne0 = t.dims.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(block) {
        return Err(format!(
            "row length {ne0} is not a multiple of the {} block size {block}",
            DType::ggml_name(t.ggml_type)
        ));
    }
    let n_bytes = (t.n_elements / block)
        .checked_mul(type_size)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("byte size overflows")?;
    let start =
        usize::try_from(t.offset).ok().and_then(|o| o.checked_add(data_offset)).ok_or("data offset overflows")?;
    let end = start.checked_add(n_bytes).ok_or("data end overflows")?;
    if end > file_len {
        return Err(format!("data bytes {start}..{end} lie outside the {file_len}-byte file (truncated download?)"));
    }
    t.data_range = Some((start, n_bytes));
    Ok(())
}
