//! The GGUF header reader: metadata and tensor tables read back as written,
//! every malformed header refused with a message naming the file and the
//! key or tensor, and no input — truncated, mutated or random — panics or
//! allocates from an unchecked length.

use std::path::Path;

use inference::gguf::{Gguf, Value};
use proptest::prelude::*;

/// Writes GGUF headers (and zeroed tensor data) for the tests.
#[derive(Default, Clone)]
struct Writer {
    version: u32,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data_len: u64,
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Writer {
    fn new() -> Writer {
        Writer {
            version: 3,
            ..Default::default()
        }
    }
    fn u32(mut self, key: &str, v: u32) -> Writer {
        self.kv.push((key.into(), 4, v.to_le_bytes().to_vec()));
        self
    }
    fn f32(mut self, key: &str, v: f32) -> Writer {
        self.kv.push((key.into(), 6, v.to_le_bytes().to_vec()));
        self
    }
    fn str(mut self, key: &str, v: &str) -> Writer {
        self.kv.push((key.into(), 8, string(v)));
        self
    }
    fn strs(mut self, key: &str, v: &[&str]) -> Writer {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        for s in v {
            b.extend(string(s));
        }
        self.kv.push((key.into(), 9, b));
        self
    }
    fn raw(mut self, key: &str, t: u32, bytes: Vec<u8>) -> Writer {
        self.kv.push((key.into(), t, bytes));
        self
    }
    fn tensor(mut self, name: &str, dims: &[u64], t: u32, offset: u64) -> Writer {
        self.tensors.push((name.into(), dims.to_vec(), t, offset));
        self
    }
    fn data(mut self, n: u64) -> Writer {
        self.data_len = n;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, t, v) in &self.kv {
            b.extend(string(k));
            b.extend(t.to_le_bytes());
            b.extend(v);
        }
        for (name, dims, t, offset) in &self.tensors {
            b.extend(string(name));
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(std::iter::repeat_n(0u8, self.data_len as usize));
        b
    }
}

fn read(bytes: &[u8]) -> inference::Result<Gguf> {
    Gguf::read(bytes, bytes.len() as u64, Path::new("model.gguf"))
}

fn error(bytes: &[u8]) -> String {
    let e = read(bytes).expect_err("should be refused").to_string();
    assert!(e.starts_with("model.gguf: "), "names the file: {e}");
    e
}

/// A small valid file: metadata of every scalar kind, two F32 tensors.
fn valid() -> Writer {
    Writer::new()
        .str("general.architecture", "llama")
        .u32("llama.block_count", 2)
        .f32("llama.rope.freq_base", 10000.0)
        .strs("tokenizer.ggml.tokens", &["a", "b", "ñ"])
        .raw("flag", 7, vec![1])
        .tensor("token_embd.weight", &[4, 3], 0, 0)
        .tensor("output_norm.weight", &[4], 0, 64)
        .data(80)
}

#[test]
fn reads_back_metadata_and_tensors() {
    let g = read(&valid().bytes()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.f64("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap(), ["a", "b", "ñ"]);
    assert_eq!(g.get("flag"), Some(&Value::Bool(true)));
    let t = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        t.shape(),
        vec![3, 4],
        "row-major shape reverses GGML's dims"
    );
    assert_eq!((t.kind.name, t.nbytes()), ("F32", 48));
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.data_offset % 32, 0);
}

#[test]
fn missing_and_mistyped_keys_are_named() {
    let g = read(&valid().bytes()).unwrap();
    let e = g.u64("llama.context_length").unwrap_err().to_string();
    assert!(e.contains("`llama.context_length` is missing"), "{e}");
    let e = g.u64("general.architecture").unwrap_err().to_string();
    assert!(
        e.contains("`general.architecture` should be a non-negative integer"),
        "{e}"
    );
}

#[test]
fn bad_magic_and_versions() {
    let mut b = valid().bytes();
    b[..4].copy_from_slice(b"GGML");
    assert!(error(&b).contains("not a GGUF file"));
    for v in [0u32, 1, 4, 99] {
        let mut w = valid();
        w.version = v;
        let e = error(&w.bytes());
        assert!(
            e.contains(&format!("GGUF version {v} is not supported")),
            "{e}"
        );
    }
}

#[test]
fn truncation_anywhere_is_an_error() {
    let b = valid().bytes();
    for cut in 0..b.len() {
        let e = error(&b[..cut]);
        assert!(
            e.contains("truncated") || e.contains("cannot"),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn lengths_beyond_the_file_are_refused_before_allocating() {
    // A string length of 2^60 and an array of 2^62 elements in a tiny file.
    let mut huge_string = (1u64 << 60).to_le_bytes().to_vec();
    huge_string.extend(b"x");
    let e = error(&Writer::new().raw("k", 8, huge_string).bytes());
    assert!(e.contains("truncated"), "{e}");
    let mut huge_array = 4u32.to_le_bytes().to_vec();
    huge_array.extend((1u64 << 62).to_le_bytes());
    let e = error(&Writer::new().raw("tokens", 9, huge_array).bytes());
    assert!(e.contains("`tokens` claims"), "{e}");
    // Counts of entries far beyond the file.
    let mut b = Writer::new().bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(error(&b).contains("tensor entries cannot fit"));
    let mut b = Writer::new().bytes();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(error(&b).contains("metadata entries cannot fit"));
}

#[test]
fn malformed_values_are_refused() {
    let e = error(&Writer::new().raw("k", 13, vec![0; 8]).bytes());
    assert!(e.contains("`k` has unknown value type 13"), "{e}");
    let e = error(&Writer::new().raw("k", 7, vec![2]).bytes());
    assert!(e.contains("bool stored as 2"), "{e}");
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(1u64.to_le_bytes());
    nested.extend(4u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    let e = error(&Writer::new().raw("k", 9, nested).bytes());
    assert!(e.contains("`k` is a nested array"), "{e}");
    let e = error(
        &Writer::new()
            .raw("k", 8, string("\u{1F600}")[..10].to_vec())
            .bytes(),
    );
    assert!(e.contains("truncated") || e.contains("UTF-8"), "{e}");
    let e = error(&Writer::new().u32("a", 1).u32("a", 2).bytes());
    assert!(e.contains("`a` appears twice"), "{e}");
    let e = error(&Writer::new().u32("general.alignment", 3).bytes());
    assert!(e.contains("general.alignment"), "{e}");
}

#[test]
fn malformed_tensor_tables_are_refused() {
    let cases: Vec<(Writer, &str)> = vec![
        (
            Writer::new().tensor("w", &[32], 99, 0).data(32),
            "tensor `w` has unknown tensor type 99",
        ),
        (
            Writer::new().tensor("w", &[], 0, 0),
            "tensor `w` has 0 dimensions",
        ),
        (
            Writer::new().tensor("w", &[1, 1, 1, 1, 1], 0, 0).data(32),
            "tensor `w` has 5 dimensions",
        ),
        (
            Writer::new().tensor("w", &[4, 0], 0, 0),
            "tensor `w` has dimensions [4, 0]",
        ),
        (
            Writer::new().tensor("w", &[(1 << 32) + 64], 0, 0),
            "each must be between 1 and 2147483647",
        ),
        (
            Writer::new().tensor("w", &[16], 3, 0).data(32),
            "tensor `w` is Q4_1 but its rows of 16 elements are not whole blocks of 32",
        ),
        (
            Writer::new().tensor("w", &[4], 0, 8).data(64),
            "tensor `w` starts at data offset 8, not a multiple of the alignment 32",
        ),
        (
            Writer::new().tensor("w", &[64], 0, 0).data(100),
            "truncated: tensor `w` ends at byte 256",
        ),
        (
            Writer::new()
                .tensor("a", &[16], 0, 0)
                .tensor("b", &[16], 0, 32)
                .data(128),
            "tensors `a` and `b` overlap",
        ),
        (
            Writer::new()
                .tensor("a", &[4], 0, 0)
                .tensor("a", &[4], 0, 32)
                .data(64),
            "tensor `a` appears twice",
        ),
    ];
    for (w, expected) in cases {
        let e = error(&w.bytes());
        assert!(e.contains(expected), "expected {expected:?} in {e}");
    }
}

#[test]
fn is_gguf_and_missing_model_wording() {
    let dir = test_support::ScratchDir::new("inference-gguf");
    let good = dir.join("m.gguf");
    std::fs::write(&good, valid().bytes()).unwrap();
    let bad = dir.join("other.bin");
    std::fs::write(&bad, b"GGM").unwrap();
    assert!(inference::gguf::is_gguf(&good));
    assert!(!inference::gguf::is_gguf(&bad));
    assert!(Gguf::open(&good).is_ok());
    let e = Gguf::open(dir.join("none.gguf")).unwrap_err().to_string();
    assert!(e.contains("none.gguf"), "{e}");
    assert_eq!(
        inference::gguf::missing_model(Path::new("x.GGUF")),
        "no such GGUF file"
    );
    assert_eq!(
        inference::gguf::missing_model(Path::new("x")),
        "no such model directory"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any byte of a valid header changed to any value: parsed or refused,
    /// never a panic (a length field turned huge must not allocate).
    #[test]
    fn mutated_headers_never_panic(at in 0usize..400, value in any::<u8>(), cut in 0usize..420) {
        let mut b = valid().bytes();
        let at = at % b.len();
        b[at] = value;
        b.truncate(cut.min(b.len()));
        let _ = read(&b);
    }

    /// Random bytes behind the magic and a valid version.
    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(body);
        let _ = read(&b);
    }
}

#[test]
fn write_then_read_round_trips() {
    use inference::gguf::{write, TensorData, TensorType};
    use std::collections::BTreeMap;
    let path = test_support::ScratchFile::new("inference-write.gguf");
    let metadata = BTreeMap::from([
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("llama.block_count".to_string(), Value::U32(3)),
        ("eps".to_string(), Value::F32(1e-5)),
        (
            "tokens".to_string(),
            Value::Array(vec![Value::String("a".into()), Value::String("é".into())]),
        ),
        (
            "types".to_string(),
            Value::Array(vec![Value::I32(1), Value::I32(3)]),
        ),
    ]);
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors = [
        TensorData {
            name: "a".into(),
            shape: vec![2, 3],
            kind: TensorType::named("F32").unwrap(),
            data: f32s(&[1., 2., 3., 4., 5., 6.]),
        },
        TensorData {
            name: "b".into(),
            shape: vec![5],
            kind: TensorType::named("F32").unwrap(),
            data: f32s(&[0.; 5]),
        },
    ];
    write(&path, &metadata, &tensors).unwrap();
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.metadata, metadata);
    assert_eq!(g.tensor("a").unwrap().shape(), vec![2, 3]);
    assert_eq!(g.tensor("b").unwrap().offset % 32, 0);
    let bytes = std::fs::read(&path).unwrap();
    let a = g.tensor("a").unwrap();
    let start = (g.data_offset + a.offset) as usize;
    assert_eq!(&bytes[start..start + 24], &tensors[0].data[..]);

    let wrong = TensorData {
        data: vec![0; 3],
        ..tensors[1].clone()
    };
    let e = write(&path, &metadata, &[wrong]).unwrap_err().to_string();
    assert!(
        e.contains("tensor `b`: 3 bytes do not hold shape [5] of F32"),
        "{e}"
    );
}
