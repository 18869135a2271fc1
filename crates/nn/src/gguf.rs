//! GGUF (version 3) reading: the header, the metadata (architecture, hyper-parameters, tokenizer vocabulary,
//! merges and chat template) and the tensor directory, then each tensor dequantised to f32 on request.
//!
//! Two traps of llama GGUF files are handled by the model loader, not here: dimensions are listed innermost
//! first (a `[576, 49152]` tensor is 49,152 rows of 576), and the converter permutes the Q/K rows for
//! adjacent-pair RoPE.

use std::collections::BTreeMap;
use std::path::Path;

use crate::quant;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Caps on header fields, so a corrupt file fails with a message instead of allocating terabytes.
const MAX_STRING: u64 = 1 << 26;
const MAX_ITEMS: u64 = 1 << 24;
const MAX_DIMS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("not a GGUF file (magic {0:?})")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    Version(u32),
    #[error("the file is truncated: {0}")]
    Truncated(String),
    #[error("corrupt GGUF header: {0}")]
    Corrupt(String),
    #[error("tensor `{name}` has type {kind}, which is not supported (F32, F16, Q4_0, Q4_1, Q8_0 are)")]
    UnsupportedType { name: String, kind: u32 },
    #[error("no tensor named `{0}`")]
    MissingTensor(String),
    #[error("metadata key `{0}` is missing or has the wrong type")]
    MissingKey(String),
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
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
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl TensorType {
    pub fn from_code(code: u32) -> Option<TensorType> {
        Some(match code {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            _ => return None,
        })
    }
    pub fn code(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q4_1 => 3,
            TensorType::Q8_0 => 8,
        }
    }
    /// Bytes for `n` elements (`n` a multiple of the block size for block formats).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let blocks = || n.is_multiple_of(quant::BLOCK as u64).then_some(n / quant::BLOCK as u64);
        match self {
            TensorType::F32 => n.checked_mul(4),
            TensorType::F16 => n.checked_mul(2),
            TensorType::Q4_0 => blocks()?.checked_mul(quant::Q4_0_BYTES as u64),
            TensorType::Q4_1 => blocks()?.checked_mul(quant::Q4_1_BYTES as u64),
            TensorType::Q8_0 => blocks()?.checked_mul(quant::Q8_0_BYTES as u64),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first, as stored.
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file held in memory.
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let n = usize::try_from(n).map_err(|_| GgufError::Corrupt(format!("{what} too large")))?;
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| GgufError::Truncated(format!("{what} at byte {} needs {n} bytes", self.at)))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(GgufError::Corrupt(format!("{what}: string of {len} bytes")));
        }
        let raw = self.take(len, what)?;
        Ok(String::from_utf8_lossy(raw).into_owned())
    }
    fn value(&mut self, kind: u32, what: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Corrupt(format!("{what}: arrays nested too deep")));
                }
                let inner = self.u32(what)?;
                let len = self.u64(what)?;
                if len > MAX_ITEMS {
                    return Err(GgufError::Corrupt(format!("{what}: array of {len} items")));
                }
                let mut items = Vec::with_capacity(len.min(1 << 16) as usize);
                for _ in 0..len {
                    items.push(self.value(inner, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(GgufError::Corrupt(format!("{what}: unknown value type {other}"))),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let bytes = std::fs::read(path)
            .map_err(|e| GgufError::Io { path: path.display().to_string(), message: e.to_string() })?;
        Gguf::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        let mut c = Cursor { bytes: &bytes, at: 0 };
        let magic: [u8; 4] = c.array("magic")?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let tensor_count = c.u64("tensor count")?;
        let kv_count = c.u64("metadata count")?;
        if tensor_count > MAX_ITEMS || kv_count > MAX_ITEMS {
            return Err(GgufError::Corrupt(format!("{tensor_count} tensors, {kv_count} metadata entries")));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<_>, _>>()?;
            let code = c.u32(&name)?;
            let kind =
                TensorType::from_code(code).ok_or(GgufError::UnsupportedType { name: name.clone(), kind: code })?;
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo { name, dims, kind, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(DEFAULT_ALIGNMENT).max(1);
        let data_start = (c.at as u64).div_ceil(alignment) * alignment;
        let data_len = (bytes.len() as u64).saturating_sub(data_start);
        for t in &tensors {
            let elements = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let size = elements.and_then(|n| t.kind.bytes_for(n));
            let size = size.ok_or_else(|| {
                GgufError::Corrupt(format!("tensor `{}` has an impossible shape {:?}", t.name, t.dims))
            })?;
            if t.offset.checked_add(size).is_none_or(|end| end > data_len) {
                return Err(GgufError::Truncated(format!("tensor `{}` ends past the end of the file", t.name)));
            }
        }
        Ok(Gguf { version, metadata, tensors, data_start: data_start as usize, bytes })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    /// The tensor's values as f32, in storage order (innermost dimension fastest).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        let n = info.elements() as usize;
        let size = info.kind.bytes_for(n as u64).unwrap_or(0) as usize;
        let start = self.data_start + info.offset as usize;
        let raw = &self.bytes[start..start + size];
        let mut out = vec![0.0f32; n];
        match info.kind {
            TensorType::F32 => {
                for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            TensorType::F16 => {
                for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = quant::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            TensorType::Q4_0 => quant::dequant_q4_0(raw, &mut out),
            TensorType::Q4_1 => quant::dequant_q4_1(raw, &mut out),
            TensorType::Q8_0 => quant::dequant_q8_0(raw, &mut out),
        }
        Ok(out)
    }
}

/// Writes a GGUF v3 file of F32/F16 tensors (used to export trained models, and by tests to make files).
pub fn write(
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<u64>, TensorType, Vec<f32>)],
) -> Result<Vec<u8>, GgufError> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn value(out: &mut Vec<u8>, v: &Value, with_type: bool) {
        let (code, body): (u32, Vec<u8>) = match v {
            Value::U8(x) => (0, vec![*x]),
            Value::I8(x) => (1, vec![*x as u8]),
            Value::U16(x) => (2, x.to_le_bytes().to_vec()),
            Value::I16(x) => (3, x.to_le_bytes().to_vec()),
            Value::U32(x) => (4, x.to_le_bytes().to_vec()),
            Value::I32(x) => (5, x.to_le_bytes().to_vec()),
            Value::F32(x) => (6, x.to_le_bytes().to_vec()),
            Value::Bool(x) => (7, vec![*x as u8]),
            Value::String(s) => {
                let mut b = Vec::new();
                string(&mut b, s);
                (8, b)
            }
            Value::Array(items) => {
                let mut b = Vec::new();
                let inner = items.first().map(type_code).unwrap_or(4);
                b.extend_from_slice(&inner.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    value(&mut b, item, false);
                }
                (9, b)
            }
            Value::U64(x) => (10, x.to_le_bytes().to_vec()),
            Value::I64(x) => (11, x.to_le_bytes().to_vec()),
            Value::F64(x) => (12, x.to_le_bytes().to_vec()),
        };
        if with_type {
            out.extend_from_slice(&code.to_le_bytes());
        }
        out.extend_from_slice(&body);
    }
    fn type_code(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        string(&mut out, k);
        value(&mut out, v, true);
    }
    let mut data = Vec::new();
    for (name, dims, kind, values) in tensors {
        let n: u64 = dims.iter().product();
        if n as usize != values.len() {
            return Err(GgufError::Corrupt(format!("tensor `{name}`: {} values for shape {dims:?}", values.len())));
        }
        string(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&kind.code().to_le_bytes());
        while data.len() % DEFAULT_ALIGNMENT as usize != 0 {
            data.push(0);
        }
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        match kind {
            TensorType::F32 => values.iter().for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            TensorType::F16 => values.iter().for_each(|v| data.extend_from_slice(&quant::f32_to_f16(*v).to_le_bytes())),
            other => return Err(GgufError::UnsupportedType { name: name.clone(), kind: other.code() }),
        }
    }
    while out.len() % DEFAULT_ALIGNMENT as usize != 0 {
        out.push(0);
    }
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let meta = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("llama.block_count".to_string(), Value::U32(2)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
        ];
        let tensors = vec![
            ("w".to_string(), vec![3, 2], TensorType::F32, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ("h".to_string(), vec![4], TensorType::F16, vec![0.5, -1.0, 2.0, 1024.0]),
        ];
        write(&meta, &tensors).unwrap()
    }

    #[test]
    fn written_files_read_back() {
        let g = Gguf::parse(sample()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.u64("llama.block_count").unwrap(), 2);
        assert_eq!(g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len(), 2);
        assert_eq!(g.tensor("w").unwrap().dims, vec![3, 2]);
        assert_eq!(g.tensor_f32("w").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(g.tensor_f32("h").unwrap(), vec![0.5, -1.0, 2.0, 1024.0]);
        assert!(matches!(g.tensor_f32("nope"), Err(GgufError::MissingTensor(_))));
        assert!(matches!(g.u64("general.architecture"), Err(GgufError::MissingKey(_))));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(matches!(Gguf::parse(b"GGML\x03\0\0\0".to_vec()), Err(GgufError::BadMagic(_))));
        let mut v = sample();
        v[4] = 9;
        assert!(matches!(Gguf::parse(v), Err(GgufError::Version(9))));
        let full = sample();
        for cut in [3, 10, 30, 60, full.len() - 1] {
            let err = Gguf::parse(full[..cut].to_vec()).err().unwrap();
            assert!(matches!(err, GgufError::Truncated(_) | GgufError::BadMagic(_)), "cut {cut}: {err}");
        }
        // An unsupported quant type (Q5_K = 13) is named.
        let mut v = sample();
        let pos = v.windows(1 + 8).position(|w| w[0] == b'h' && w[1..5] == 1u32.to_le_bytes()).unwrap();
        let type_at = pos + 1 + 4 + 8;
        v[type_at..type_at + 4].copy_from_slice(&13u32.to_le_bytes());
        let err = Gguf::parse(v).err().unwrap();
        assert!(matches!(err, GgufError::UnsupportedType { kind: 13, .. }), "{err}");
        // A huge string length is refused before allocating.
        let mut v = sample();
        v[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Gguf::parse(v).is_err());
    }
}
