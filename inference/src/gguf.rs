//! Reading the header of a GGUF file (llama.cpp's single-file model format):
//! the metadata key/value pairs and the tensor table, every length and
//! offset checked against the file before anything is allocated.
//!
//! Only the header is read here; the tensor data is left to the backend
//! (MLX reads it itself once the header has been validated).
//!
//! ```no_run
//! let gguf = inference::gguf::Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! println!("{} with {} tensors", gguf.architecture()?, gguf.tensors.len());
//! let layers = gguf.u64(&format!("{}.block_count", gguf.architecture()?))?;
//! # Ok::<(), inference::Error>(())
//! ```

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// Tensor data starts at a multiple of this unless `general.alignment` says
/// otherwise.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Most dimensions a GGML tensor has.
const MAX_DIMS: u32 = 4;

/// Nested arrays deeper than this are refused (MLX reads none).
const MAX_ARRAY_DEPTH: u32 = 1;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 `string`.
    String(String),
    /// An `array` of values of one type.
    Array(Vec<Value>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements of an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A GGML tensor type: its name, and how many elements a block of how many
/// bytes holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorType {
    /// The numeric id in the file.
    pub id: u32,
    /// llama.cpp's name (`F32`, `Q4_1`, ...).
    pub name: &'static str,
    /// Elements per block.
    pub block: u64,
    /// Bytes per block.
    pub bytes: u64,
}

/// Every GGML tensor type this reader knows the layout of.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (30, "BF16", 1, 2),
];

impl TensorType {
    /// The type llama.cpp calls `name` (`F32`, `Q4_1`, ...), if known.
    pub fn named(name: &str) -> Option<TensorType> {
        TYPES
            .iter()
            .find(|t| t.1 == name)
            .and_then(|t| TensorType::from_id(t.0))
    }

    /// The type with numeric id `id`, if known.
    pub fn from_id(id: u32) -> Option<TensorType> {
        TYPES
            .iter()
            .find(|t| t.0 == id)
            .map(|&(id, name, block, bytes)| TensorType {
                id,
                name,
                block,
                bytes,
            })
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Dimensions in GGML order (innermost first): a `[rows, cols]` matrix
    /// is stored as `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub kind: TensorType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape in row-major order (outermost first), as MLX reports it.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of data.
    pub fn nbytes(&self) -> u64 {
        self.elements() / self.kind.block * self.kind.bytes
    }
}

/// A GGUF file's header: version, metadata and tensor table.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The file it was read from.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts in the file.
    pub data_offset: u64,
}

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == MAGIC
}

/// What to say of a model path that does not exist: a `.gguf` path is
/// taken to name a file, anything else a directory.
pub fn missing_model(path: &Path) -> &'static str {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        "no such GGUF file"
    } else {
        "no such model directory"
    }
}

/// Reads little-endian values from a source of known length, refusing any
/// length field that asks for more bytes than are left.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

/// A read failure before it is given the file's name.
type Fault = String;

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> std::result::Result<Vec<u8>, Fault> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {} left",
                self.pos,
                self.remaining()
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("cannot read {what} at offset {}: {e}", self.pos))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], Fault> {
        let v = self.bytes(N as u64, what)?;
        Ok(v.try_into().expect("read exactly N bytes"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, Fault> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, Fault> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, Fault> {
        let n = self.u64(what)?;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    /// The smallest encoding of one element of type `t` (for bounding
    /// array counts before allocating).
    fn min_size(t: u32) -> u64 {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        }
    }

    fn value(&mut self, t: u32, key: &str, depth: u32) -> std::result::Result<Value, Fault> {
        let what = format!("the value of `{key}`");
        Ok(match t {
            0 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what} is a bool stored as {b}")),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("`{key}` is a nested array, which is not supported"));
                }
                let elem = self.u32(&what)?;
                let count = self.u64(&what)?;
                if count.saturating_mul(Self::min_size(elem)) > self.remaining() {
                    return Err(format!(
                        "truncated: `{key}` claims {count} elements but the file has {} bytes left",
                        self.remaining()
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => return Err(format!("`{key}` has unknown value type {other}")),
        })
    }
}

impl Gguf {
    /// Reads and validates the header of the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let len = file
            .metadata()
            .map_err(|e| Error::Io {
                path: path.to_path_buf(),
                source: e,
            })?
            .len();
        Gguf::read(BufReader::new(file), len, path)
    }

    /// Reads and validates a GGUF header from `source`, which holds `len`
    /// bytes in all; `path` names it in errors.
    pub fn read(source: impl Read, len: u64, path: &Path) -> Result<Gguf> {
        let mut r = Reader {
            inner: source,
            pos: 0,
            len,
        };
        parse(&mut r, path).map_err(|message| Error::invalid_model(path, message))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.str("general.architecture")
    }

    fn missing(&self, key: &str, what: &str) -> Error {
        let message = match self.metadata.get(key) {
            None => format!("metadata key `{key}` is missing"),
            Some(v) => format!("metadata key `{key}` should be {what}, found {v:?}"),
        };
        Error::invalid_model(&self.path, message)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    /// A required non-negative integer.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(key, "a non-negative integer"))
    }

    /// A required number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.missing(key, "a number"))
    }

    /// A required array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.missing(key, "an array of strings"))
    }

    /// A required array of integers.
    pub fn ints(&self, key: &str) -> Result<Vec<i64>> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.missing(key, "an array of integers"))
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn parse<R: Read>(r: &mut Reader<R>, path: &Path) -> std::result::Result<Gguf, Fault> {
    let magic = r.array::<4>("the magic number")?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"
        ));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (versions 2 and 3 are)"
        ));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes,
    // a tensor entry at least 8 + 4 + 4 + 8 bytes.
    if kv_count.saturating_mul(13) > r.remaining() {
        return Err(format!(
            "truncated or corrupt: {kv_count} metadata entries cannot fit in the file"
        ));
    }
    if tensor_count.saturating_mul(24) > r.remaining() {
        return Err(format!(
            "truncated or corrupt: {tensor_count} tensor entries cannot fit in the file"
        ));
    }
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("the key of metadata entry {i}"))?;
        let t = r.u32(&format!("the type of `{key}`"))?;
        let value = r.value(t, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(format!(
                    "`general.alignment` must be a power of two, found {v:?}"
                ))
            }
        },
    };
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
    let mut names = std::collections::HashSet::new();
    for i in 0..tensor_count {
        let name = r.string(&format!("the name of tensor {i}"))?;
        let what = format!("tensor `{name}`");
        let ndims = r.u32(&what)?;
        if ndims == 0 || ndims > MAX_DIMS {
            return Err(format!(
                "{what} has {ndims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(ndims as usize);
        for _ in 0..ndims {
            dims.push(r.u64(&what)?);
        }
        let type_id = r.u32(&what)?;
        let kind = TensorType::from_id(type_id)
            .ok_or_else(|| format!("{what} has unknown tensor type {type_id}"))?;
        let offset = r.u64(&what)?;
        if dims.iter().any(|&d| d == 0 || d > i32::MAX as u64) {
            return Err(format!(
                "{what} has dimensions {dims:?}; each must be between 1 and {}",
                i32::MAX
            ));
        }
        dims.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("{what} has dimensions {dims:?}, too many elements"))?;
        if dims[0] % kind.block != 0 {
            return Err(format!(
                "{what} is {} but its rows of {} elements are not whole blocks of {}",
                kind.name, dims[0], kind.block
            ));
        }
        if offset % alignment != 0 {
            return Err(format!(
                "{what} starts at data offset {offset}, not a multiple of the alignment {alignment}"
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!("{what} appears twice"));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            kind,
            offset,
        });
    }
    let data_offset = r.pos.div_ceil(alignment) * alignment;
    let data_len = r.len.saturating_sub(data_offset);
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| {
            (
                t.offset,
                t.offset.saturating_add(t.nbytes()),
                t.name.as_str(),
            )
        })
        .collect();
    spans.sort();
    for (i, &(_, end, name)) in spans.iter().enumerate() {
        if end > data_len {
            return Err(format!(
                "truncated: tensor `{name}` ends at byte {end} of the data section but the file holds {data_len}"
            ));
        }
        if let Some(&(next, _, other)) = spans.get(i + 1) {
            if next < end {
                return Err(format!("tensors `{name}` and `{other}` overlap"));
            }
        }
    }
    Ok(Gguf {
        path: path.to_path_buf(),
        version,
        metadata,
        tensors,
        data_offset,
    })
}

/// A tensor for [`write()`]: its data, little-endian, in a GGML type.
#[derive(Debug, Clone)]
pub struct TensorData {
    /// The tensor's name.
    pub name: String,
    /// Row-major shape (outermost first).
    pub shape: Vec<u64>,
    /// Element type (`F32`, `F16`, ... or a block format).
    pub kind: TensorType,
    /// The bytes, `elements / block * bytes` of them.
    pub data: Vec<u8>,
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
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

    fn encode(&self, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        match self {
            Value::U8(v) => out.extend(v.to_le_bytes()),
            Value::I8(v) => out.extend(v.to_le_bytes()),
            Value::U16(v) => out.extend(v.to_le_bytes()),
            Value::I16(v) => out.extend(v.to_le_bytes()),
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Value::Array(items) => {
                let t = items.first().map_or(4, Value::type_id);
                if t == 9 || items.iter().any(|v| v.type_id() != t) {
                    return Err("arrays must hold scalars or strings of one type".into());
                }
                out.extend(t.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    v.encode(out)?;
                }
            }
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::I64(v) => out.extend(v.to_le_bytes()),
            Value::F64(v) => out.extend(v.to_le_bytes()),
        }
        Ok(())
    }
}

/// Writes a GGUF (version 3) file: `metadata`, then `tensors` in order,
/// each aligned to [`DEFAULT_ALIGNMENT`] bytes.
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use inference::gguf::{write, TensorData, TensorType, Value};
///
/// let metadata = BTreeMap::from([("general.architecture".to_string(), Value::String("llama".into()))]);
/// let norm = TensorData {
///     name: "output_norm.weight".into(),
///     shape: vec![4],
///     kind: TensorType::named("F32").unwrap(),
///     data: [1.0f32; 4].iter().flat_map(|x| x.to_le_bytes()).collect(),
/// };
/// write("tiny.gguf", &metadata, &[norm])?;
/// # Ok::<(), inference::Error>(())
/// ```
pub fn write(
    path: impl AsRef<Path>,
    metadata: &BTreeMap<String, Value>,
    tensors: &[TensorData],
) -> Result<()> {
    let path = path.as_ref();
    let fail = |m: String| Error::invalid_model(path, m);
    let mut out = MAGIC.to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        Value::String(key.clone()).encode(&mut out).map_err(&fail)?;
        out.extend(value.type_id().to_le_bytes());
        value
            .encode(&mut out)
            .map_err(|m| fail(format!("`{key}`: {m}")))?;
    }
    let mut offset = 0u64;
    for t in tensors {
        let info = TensorInfo {
            name: t.name.clone(),
            dims: t.shape.iter().rev().copied().collect(),
            kind: t.kind,
            offset,
        };
        if info.dims.first().is_none_or(|d| d % t.kind.block != 0)
            || info.nbytes() != t.data.len() as u64
        {
            return Err(fail(format!(
                "tensor `{}`: {} bytes do not hold shape {:?} of {}",
                t.name,
                t.data.len(),
                t.shape,
                t.kind.name
            )));
        }
        Value::String(t.name.clone())
            .encode(&mut out)
            .map_err(&fail)?;
        out.extend((info.dims.len() as u32).to_le_bytes());
        for d in &info.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.kind.id.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = (offset + info.nbytes()).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    for t in tensors {
        out.resize(
            out.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize,
            0,
        );
        out.extend(&t.data);
    }
    std::fs::write(path, out).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })
}
