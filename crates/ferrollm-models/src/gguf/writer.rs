//! Writes GGUF images. Used by tests to build small, exactly-known files (and by tools that
//! need a GGUF without a Python toolchain); not tuned for multi-gigabyte models.

use super::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC};
use super::value::{type_id, MetadataArray, MetadataValue};

struct PendingTensor {
    name: String,
    /// GGUF order, ne0 first.
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory.
pub struct GgufWriter {
    version: u32,
    alignment: usize,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A version-3 writer with the default alignment of 32.
    pub fn new() -> Self {
        GgufWriter { version: 3, alignment: DEFAULT_ALIGNMENT, metadata: Vec::new(), tensors: Vec::new() }
    }

    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets `general.alignment` (a power of two) and pads the data section to it.
    pub fn alignment(&mut self, alignment: u32) -> &mut Self {
        self.alignment = alignment as usize;
        self.metadata.retain(|(k, _)| k != ALIGNMENT_KEY);
        self.metadata.push((ALIGNMENT_KEY.to_string(), MetadataValue::U32(alignment)));
        self
    }

    pub fn add(&mut self, key: &str, value: MetadataValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    pub fn add_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.add(key, MetadataValue::U32(v))
    }

    pub fn add_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.add(key, MetadataValue::F32(v))
    }

    pub fn add_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.add(key, MetadataValue::Bool(v))
    }

    pub fn add_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.add(key, MetadataValue::String(v.to_string()))
    }

    pub fn add_str_array<S: AsRef<str>>(&mut self, key: &str, v: &[S]) -> &mut Self {
        let v = v.iter().map(|s| s.as_ref().to_string()).collect();
        self.add(key, MetadataValue::Array(MetadataArray::String(v)))
    }

    /// Adds a tensor; `shape` is row-major (outermost first), as in [`crate::TensorData`].
    pub fn add_tensor(&mut self, name: &str, shape: &[usize], ggml_type: u32, data: Vec<u8>) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push(PendingTensor { name: name.to_string(), dims, ggml_type, data });
        self
    }

    /// An f32 tensor from values.
    pub fn add_f32_tensor(&mut self, name: &str, shape: &[usize], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, shape, 0, data)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            write_value(&mut out, v);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len()).next_multiple_of(self.alignment);
        }
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        let base = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    pub fn write(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &MetadataValue) -> u32 {
    match v {
        MetadataValue::U8(_) => type_id::UINT8,
        MetadataValue::I8(_) => type_id::INT8,
        MetadataValue::U16(_) => type_id::UINT16,
        MetadataValue::I16(_) => type_id::INT16,
        MetadataValue::U32(_) => type_id::UINT32,
        MetadataValue::I32(_) => type_id::INT32,
        MetadataValue::U64(_) => type_id::UINT64,
        MetadataValue::I64(_) => type_id::INT64,
        MetadataValue::F32(_) => type_id::FLOAT32,
        MetadataValue::F64(_) => type_id::FLOAT64,
        MetadataValue::Bool(_) => type_id::BOOL,
        MetadataValue::String(_) => type_id::STRING,
        MetadataValue::Array(_) => type_id::ARRAY,
    }
}

fn array_elem_type(a: &MetadataArray) -> u32 {
    match a {
        MetadataArray::U8(_) => type_id::UINT8,
        MetadataArray::I8(_) => type_id::INT8,
        MetadataArray::U16(_) => type_id::UINT16,
        MetadataArray::I16(_) => type_id::INT16,
        MetadataArray::U32(_) => type_id::UINT32,
        MetadataArray::I32(_) => type_id::INT32,
        MetadataArray::U64(_) => type_id::UINT64,
        MetadataArray::I64(_) => type_id::INT64,
        MetadataArray::F32(_) => type_id::FLOAT32,
        MetadataArray::F64(_) => type_id::FLOAT64,
        MetadataArray::Bool(_) => type_id::BOOL,
        MetadataArray::String(_) => type_id::STRING,
        MetadataArray::Array(_) => type_id::ARRAY,
    }
}

fn write_value(out: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => out.push(*x),
        MetadataValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(u8::from(*x)),
        MetadataValue::String(s) => write_str(out, s),
        MetadataValue::Array(a) => write_array(out, a),
    }
}

fn write_array(out: &mut Vec<u8>, a: &MetadataArray) {
    out.extend_from_slice(&array_elem_type(a).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T: Copy, const N: usize>(out: &mut Vec<u8>, xs: &[T], f: impl Fn(T) -> [u8; N]) {
        for &x in xs {
            out.extend_from_slice(&f(x));
        }
    }
    match a {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => each(out, v, i8::to_le_bytes),
        MetadataArray::U16(v) => each(out, v, u16::to_le_bytes),
        MetadataArray::I16(v) => each(out, v, i16::to_le_bytes),
        MetadataArray::U32(v) => each(out, v, u32::to_le_bytes),
        MetadataArray::I32(v) => each(out, v, i32::to_le_bytes),
        MetadataArray::U64(v) => each(out, v, u64::to_le_bytes),
        MetadataArray::I64(v) => each(out, v, i64::to_le_bytes),
        MetadataArray::F32(v) => each(out, v, f32::to_le_bytes),
        MetadataArray::F64(v) => each(out, v, f64::to_le_bytes),
        MetadataArray::Bool(v) => each(out, v, |b: bool| [u8::from(b)]),
        MetadataArray::String(v) => v.iter().for_each(|s| write_str(out, s)),
        MetadataArray::Array(v) => v.iter().for_each(|a| write_array(out, a)),
    }
}
