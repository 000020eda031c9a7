//! GGUF model files: a memory-mapped reader with typed metadata access.
//!
//! The header is parsed eagerly and validated completely (every count, string and tensor range
//! is checked against the file size), so a `GgufFile` that opened successfully hands out tensor
//! views without further checks. Tensor data is never copied: [`TensorData::bytes`] is a view
//! into the one shared mapping.

pub mod cut;
mod parse;
mod reader;
pub mod value;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ferrollm_kernels::{Backing, Bytes, DType};

pub use cut::{cut_layers, CutSummary};
pub use value::{MetadataArray, MetadataValue};
pub use writer::GgufWriter;

use crate::{ModelError, TensorData, WeightSource};

/// Where and how one tensor is stored.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Row-major, outermost first: GGUF's `ne` reversed, so a `[out, in]` weight is `[out, in]`.
    pub shape: Vec<usize>,
    /// GGUF's own order, `ne0` (the contiguous dimension) first.
    pub dims: Vec<u64>,
    /// The `ggml_type` id; see [`DType::from_ggml_id`].
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    /// Absolute `(start, len)` in the file; always set once the file has been validated.
    data_range: Option<(usize, usize)>,
}

impl GgufTensorInfo {
    /// The element type, or `None` for a type ferrollm cannot load.
    pub fn dtype(&self) -> Option<DType> {
        DType::from_ggml_id(self.ggml_type)
    }

    /// Size of the tensor's data in bytes.
    pub fn byte_len(&self) -> usize {
        self.data_range.map_or(0, |(_, len)| len)
    }

    /// llama.cpp's name for the type, for messages.
    pub fn type_name(&self) -> &'static str {
        DType::ggml_name(self.ggml_type)
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    path: String,
    data: Arc<dyn Backing>,
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, ModelError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io_err = |source| ModelError::Io { path: shown.clone(), source };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len < 24 {
            return Err(ModelError::BadGguf {
                path: shown,
                reason: format!("file is {len} bytes, too short for a GGUF header"),
            });
        }
        let map = crate::mapped::MappedFile::map(&file).map_err(io_err)?;
        Self::from_shared(shown, Arc::new(map))
    }

    /// Parses a GGUF image held in memory (tests, fuzzing, or files fetched some other way).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
        Self::from_shared("<memory>".to_string(), Arc::new(bytes))
    }

    fn from_shared(path: String, data: Arc<dyn Backing>) -> Result<GgufFile, ModelError> {
        let p = parse::parse((*data).as_ref()).map_err(|reason| ModelError::BadGguf { path: path.clone(), reason })?;
        Ok(GgufFile {
            path,
            data,
            version: p.version,
            metadata: p.metadata,
            meta_index: p.meta_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
            alignment: p.alignment,
            data_offset: p.data_offset,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Byte offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.meta_index.contains_key(key)
    }

    /// `general.architecture`, which prefixes most model keys (`llama.block_count`, ...).
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.require_str("general.architecture")
    }

    fn bad(&self, reason: String) -> ModelError {
        ModelError::BadGguf { path: self.path.clone(), reason }
    }

    fn wrong_type(&self, key: &str, v: &MetadataValue, want: &str) -> ModelError {
        self.bad(format!("metadata key '{key}' is {} ({v:?}), expected {want}", v.type_name()))
    }

    fn missing(&self, key: &str) -> ModelError {
        self.bad(format!("missing metadata key '{key}'"))
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<Option<T>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_i128().and_then(|x| T::try_from(x).ok()).map(Some).ok_or_else(|| self.wrong_type(key, v, want))
    }

    /// An integer key as u32. Missing: `Ok(None)`; not an integer or out of range: an error
    /// naming the key. Any integer type is accepted when the value fits.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, ModelError> {
        self.get_int(key, "a u32")
    }
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, ModelError> {
        self.get_int(key, "a u64")
    }
    pub fn get_i32(&self, key: &str) -> Result<Option<i32>, ModelError> {
        self.get_int(key, "an i32")
    }
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, ModelError> {
        self.get_int(key, "an i64")
    }
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.get_int(key, "a non-negative integer")
    }

    /// A float key (f32, or f64 narrowed).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_f32().map(Some).ok_or_else(|| self.wrong_type(key, v, "a float"))
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_bool().map(Some).ok_or_else(|| self.wrong_type(key, v, "a bool"))
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_str().map(Some).ok_or_else(|| self.wrong_type(key, v, "a string"))
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&MetadataArray>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_array().map(Some).ok_or_else(|| self.wrong_type(key, v, "an array"))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v {
            MetadataValue::Array(MetadataArray::String(s)) => Ok(Some(s)),
            _ => Err(self.wrong_type(key, v, "an array of strings")),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v {
            MetadataValue::Array(MetadataArray::F32(s)) => Ok(Some(s)),
            _ => Err(self.wrong_type(key, v, "an array of f32")),
        }
    }

    /// An integer array converted to i32 (token types are i32 in llama.cpp's converter, but
    /// other writers differ).
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, ModelError> {
        self.get_int_array(key, "an array of i32")
    }

    pub fn get_u32_array(&self, key: &str) -> Result<Option<Vec<u32>>, ModelError> {
        self.get_int_array(key, "an array of u32")
    }

    fn get_int_array<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<Option<Vec<T>>, ModelError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_array()
            .and_then(MetadataArray::to_i128_vec)
            .and_then(|xs| xs.into_iter().map(|x| T::try_from(x).ok()).collect::<Option<Vec<T>>>())
            .map(Some)
            .ok_or_else(|| self.wrong_type(key, v, want))
    }

    pub fn require_u32(&self, key: &str) -> Result<u32, ModelError> {
        self.get_u32(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn require_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.get_u64(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn require_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.get_usize(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn require_f32(&self, key: &str) -> Result<f32, ModelError> {
        self.get_f32(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn require_str(&self, key: &str) -> Result<&str, ModelError> {
        self.get_str(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn require_str_array(&self, key: &str) -> Result<&[String], ModelError> {
        self.get_str_array(key)?.ok_or_else(|| self.missing(key))
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw stored bytes of a tensor of this file (any type, loadable or not).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Option<&[u8]> {
        let (start, len) = info.data_range?;
        (*self.data).as_ref().get(start..start.checked_add(len)?)
    }
}

impl WeightSource for GgufFile {
    fn tensor(&self, name: &str) -> Result<TensorData, ModelError> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let unsupported =
            || ModelError::UnsupportedTensorType { name: name.to_string(), dtype: info.type_name().to_string() };
        let dtype = info.dtype().ok_or_else(unsupported)?;
        let (start, len) =
            info.data_range.ok_or_else(|| self.bad(format!("tensor '{name}' has no validated data range")))?;
        let bytes = Bytes::new(self.data.clone(), start, len)
            .ok_or_else(|| self.bad(format!("tensor '{name}' data lies outside the file")))?;
        Ok(TensorData { name: name.to_string(), dtype, shape: info.shape.clone(), bytes })
    }

    fn has(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }
}
