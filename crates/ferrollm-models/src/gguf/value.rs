//! GGUF metadata values.
//!
//! Arrays are stored typed (`Vec<u32>`, `Vec<String>`, ...) rather than as a `Vec` of values, so
//! a 150k-entry token list costs one allocation per string and getters can hand out slices.

use super::reader::{ReadResult, Reader};

/// GGUF's metadata type ids (`gguf_type` in ggml).
pub mod type_id {
    pub const UINT8: u32 = 0;
    pub const INT8: u32 = 1;
    pub const UINT16: u32 = 2;
    pub const INT16: u32 = 3;
    pub const UINT32: u32 = 4;
    pub const INT32: u32 = 5;
    pub const FLOAT32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const UINT64: u32 = 10;
    pub const INT64: u32 = 11;
    pub const FLOAT64: u32 = 12;
}

/// Nested arrays deeper than this are rejected: real files use at most one level, and the limit
/// keeps a forged file from recursing the parser into a stack overflow.
const MAX_ARRAY_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetadataArray),
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetadataArray>),
}

impl MetadataValue {
    /// GGUF's name for this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetadataValue::U8(_) => "u8",
            MetadataValue::I8(_) => "i8",
            MetadataValue::U16(_) => "u16",
            MetadataValue::I16(_) => "i16",
            MetadataValue::U32(_) => "u32",
            MetadataValue::I32(_) => "i32",
            MetadataValue::U64(_) => "u64",
            MetadataValue::I64(_) => "i64",
            MetadataValue::F32(_) => "f32",
            MetadataValue::F64(_) => "f64",
            MetadataValue::Bool(_) => "bool",
            MetadataValue::String(_) => "string",
            MetadataValue::Array(a) => a.type_name(),
        }
    }

    /// Any integer value, widened. Converters disagree on u32 vs u64 vs i32 for the same key,
    /// so integer getters accept every integer type whose value fits.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(v) => v.into(),
            MetadataValue::I8(v) => v.into(),
            MetadataValue::U16(v) => v.into(),
            MetadataValue::I16(v) => v.into(),
            MetadataValue::U32(v) => v.into(),
            MetadataValue::I32(v) => v.into(),
            MetadataValue::U64(v) => v.into(),
            MetadataValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A float value; f64 is narrowed, integers are not accepted.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetadataValue::F32(v) => Some(v),
            MetadataValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetadataArray {
    pub fn len(&self) -> usize {
        match self {
            MetadataArray::U8(v) => v.len(),
            MetadataArray::I8(v) => v.len(),
            MetadataArray::U16(v) => v.len(),
            MetadataArray::I16(v) => v.len(),
            MetadataArray::U32(v) => v.len(),
            MetadataArray::I32(v) => v.len(),
            MetadataArray::U64(v) => v.len(),
            MetadataArray::I64(v) => v.len(),
            MetadataArray::F32(v) => v.len(),
            MetadataArray::F64(v) => v.len(),
            MetadataArray::Bool(v) => v.len(),
            MetadataArray::String(v) => v.len(),
            MetadataArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            MetadataArray::U8(_) => "array of u8",
            MetadataArray::I8(_) => "array of i8",
            MetadataArray::U16(_) => "array of u16",
            MetadataArray::I16(_) => "array of i16",
            MetadataArray::U32(_) => "array of u32",
            MetadataArray::I32(_) => "array of i32",
            MetadataArray::U64(_) => "array of u64",
            MetadataArray::I64(_) => "array of i64",
            MetadataArray::F32(_) => "array of f32",
            MetadataArray::F64(_) => "array of f64",
            MetadataArray::Bool(_) => "array of bool",
            MetadataArray::String(_) => "array of string",
            MetadataArray::Array(_) => "array of array",
        }
    }

    /// Integer elements widened to i128 (any integer element type), for lenient getters.
    pub fn to_i128_vec(&self) -> Option<Vec<i128>> {
        Some(match self {
            MetadataArray::U8(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I8(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U16(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I16(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U32(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I32(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U64(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I64(v) => v.iter().map(|&x| x.into()).collect(),
            _ => return None,
        })
    }
}

/// Reads one value of GGUF type `ty`.
pub(crate) fn read_value(r: &mut Reader<'_>, ty: u32) -> ReadResult<MetadataValue> {
    Ok(match ty {
        type_id::UINT8 => MetadataValue::U8(r.u8()?),
        type_id::INT8 => MetadataValue::I8(r.i8()?),
        type_id::UINT16 => MetadataValue::U16(r.u16()?),
        type_id::INT16 => MetadataValue::I16(r.i16()?),
        type_id::UINT32 => MetadataValue::U32(r.u32()?),
        type_id::INT32 => MetadataValue::I32(r.i32()?),
        type_id::FLOAT32 => MetadataValue::F32(r.f32()?),
        type_id::BOOL => MetadataValue::Bool(r.bool()?),
        type_id::STRING => MetadataValue::String(r.lossy_string()?),
        type_id::ARRAY => MetadataValue::Array(read_array(r, 1)?),
        type_id::UINT64 => MetadataValue::U64(r.u64()?),
        type_id::INT64 => MetadataValue::I64(r.i64()?),
        type_id::FLOAT64 => MetadataValue::F64(r.f64()?),
        other => return Err(format!("unknown metadata value type {other} at byte {}", r.pos().saturating_sub(4))),
    })
}

/// The smallest encoding of one element of type `ty`, used to cap array lengths by file size.
fn min_size(ty: u32) -> usize {
    match ty {
        type_id::UINT8 | type_id::INT8 | type_id::BOOL => 1,
        type_id::UINT16 | type_id::INT16 => 2,
        type_id::UINT32 | type_id::INT32 | type_id::FLOAT32 => 4,
        // strings: the u64 length; arrays: the u32 type plus the u64 length
        type_id::STRING | type_id::UINT64 | type_id::INT64 | type_id::FLOAT64 => 8,
        type_id::ARRAY => 12,
        _ => 1,
    }
}

fn read_n<T>(r: &mut Reader<'_>, n: usize, mut f: impl FnMut(&mut Reader<'_>) -> ReadResult<T>) -> ReadResult<Vec<T>> {
    // `n` was already checked against the bytes left, so this allocation is bounded by file size.
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(f(r)?);
    }
    Ok(v)
}

fn read_array(r: &mut Reader<'_>, depth: usize) -> ReadResult<MetadataArray> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels at byte {}", r.pos()));
    }
    let ty = r.u32()?;
    let n = r.count(min_size(ty), "array length")?;
    Ok(match ty {
        type_id::UINT8 => MetadataArray::U8(r.bytes(n)?.to_vec()),
        type_id::INT8 => MetadataArray::I8(read_n(r, n, |r| r.i8())?),
        type_id::UINT16 => MetadataArray::U16(read_n(r, n, |r| r.u16())?),
        type_id::INT16 => MetadataArray::I16(read_n(r, n, |r| r.i16())?),
        type_id::UINT32 => MetadataArray::U32(read_n(r, n, |r| r.u32())?),
        type_id::INT32 => MetadataArray::I32(read_n(r, n, |r| r.i32())?),
        type_id::FLOAT32 => MetadataArray::F32(read_n(r, n, |r| r.f32())?),
        type_id::BOOL => MetadataArray::Bool(read_n(r, n, |r| r.bool())?),
        type_id::STRING => MetadataArray::String(read_n(r, n, |r| r.lossy_string())?),
        type_id::ARRAY => MetadataArray::Array(read_n(r, n, |r| read_array(r, depth + 1))?),
        type_id::UINT64 => MetadataArray::U64(read_n(r, n, |r| r.u64())?),
        type_id::INT64 => MetadataArray::I64(read_n(r, n, |r| r.i64())?),
        type_id::FLOAT64 => MetadataArray::F64(read_n(r, n, |r| r.f64())?),
        other => return Err(format!("unknown array element type {other}")),
    })
}
