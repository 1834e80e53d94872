//! Safetensors through MLX.

mod common;

use std::collections::HashMap;

use common::{floats, ramp};
use mlx_metal::{load_safetensors, save_safetensors, Array, Dtype, Error};
use test_support::ScratchFile;

/// A scratch file's path, the file removed when the guard drops.
fn temp(name: &str) -> ScratchFile {
    ScratchFile::new(&format!("st-{name}"))
}

#[test]
fn round_trip_with_metadata_and_dtypes() {
    let path = temp("round.safetensors");
    let mut tensors = HashMap::new();
    tensors.insert("w".to_string(), ramp(&[2, 3], 0.0, 0.5));
    tensors.insert(
        "h".to_string(),
        ramp(&[4], 1.0, 1.0).astype(Dtype::Bfloat16).unwrap(),
    );
    tensors.insert("i".to_string(), Array::from_vec(&[1i32, -2]).unwrap());
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "mlx".to_string());
    save_safetensors(&path, &tensors, &meta).unwrap();

    let st = load_safetensors(&path).unwrap();
    assert_eq!(st.metadata.get("format").map(String::as_str), Some("mlx"));
    assert_eq!(st.tensors.len(), 3);
    assert_eq!(st.tensors["w"].shape(), vec![2, 3]);
    assert_eq!(floats(&st.tensors["w"]), floats(&tensors["w"]));
    assert_eq!(st.tensors["h"].dtype(), Dtype::Bfloat16);
    assert_eq!(floats(&st.tensors["h"]), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(st.tensors["i"].to_vec::<i32>().unwrap(), vec![1, -2]);
}

#[test]
fn missing_file_names_the_path() {
    let e = load_safetensors("/no/such/weights.safetensors").unwrap_err();
    assert_eq!(e.to_string(), "/no/such/weights.safetensors: no such file");
}

#[test]
fn truncated_and_corrupt_files_are_errors_naming_the_file() {
    let good = temp("good.safetensors");
    let mut tensors = HashMap::new();
    tensors.insert("w".to_string(), ramp(&[64, 64], 0.0, 1.0));
    save_safetensors(&good, &tensors, &HashMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = temp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let result = load_safetensors(&truncated).and_then(|st| st.tensors["w"].eval().map(|_| st));
    let e = result.unwrap_err();
    assert!(
        matches!(&e, Error::File { path, .. } if path == truncated.path())
            || matches!(&e, Error::Mlx(_)),
        "{e}"
    );
    assert!(
        e.to_string().contains("truncated") || e.to_string().contains("read"),
        "{e}"
    );

    let garbage = temp("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let e = load_safetensors(&garbage).unwrap_err();
    assert!(
        matches!(&e, Error::File { path, .. } if path == garbage.path()),
        "{e}"
    );
}

/// A safetensors file from a header (JSON) and `data` bytes.
fn with_header(name: &str, header: &str, data: usize) -> ScratchFile {
    let path = temp(name);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn headers_are_checked_before_mlx_reads_them() {
    use mlx_metal::llm::weights::check_header;
    let ok = with_header(
        "ok.safetensors",
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
        12,
    );
    check_header(&ok).unwrap();
    let cases = [
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            "b",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            "corrupt header",
        ),
        (
            r#"{"huge":{"dtype":"U8","shape":[4294967360],"data_offsets":[0,4294967360]}}"#,
            "tensor `huge` has shape [4294967360]",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#,
            "truncated: tensor `a` ends at byte 32",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}"#,
            "corrupt header",
        ),
    ];
    for (i, (header, expected)) in cases.iter().enumerate() {
        let path = with_header(&format!("bad{i}.safetensors"), header, 12);
        let e = check_header(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(expected), "expected {expected:?} in {e}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

    /// Any byte of a valid file changed, or the file cut short: checked or
    /// refused, never a panic or an allocation from the length field.
    #[test]
    fn mutated_headers_never_panic(at in 0usize..200, value in proptest::prelude::any::<u8>(), cut in 0usize..220) {
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 8]);
        let at = at % bytes.len();
        bytes[at] = value;
        bytes.truncate(cut.min(bytes.len()));
        let path = temp(&format!("fuzz-{at}-{cut}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        let _ = mlx_metal::llm::weights::check_header(&path);
    }
}
