//! Training data: tokenisation of the three formats (with and without
//! prompt masking) and batching against mlx_lm's tuner, and the errors bad
//! data gets.

mod common;

use std::path::Path;
use std::process::Command;

use mlx_metal::llm::NativeModel;
use mlx_metal::train::data::{batch_groups, make_batch, Encoder, Format};
use mlx_metal::Error;
use serde_json::{json, Value};
use test_support::{python, ScratchDir};

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("data-{name}"))
}

fn write_lines(dir: &Path, name: &str, lines: &[Value]) {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(dir.join(name), text.join("\n") + "\n").unwrap();
}

fn text_lines() -> Vec<Value> {
    (0..7)
        .map(|i| json!({"text": format!("Line {i}: {}", "the quick brown fox ".repeat(i * 3 + 1))}))
        .collect()
}

fn completion_lines() -> Vec<Value> {
    (0..7)
        .map(|i| json!({"prompt": format!("What is {i} times {}?", i + 2), "completion": format!("It is {}.{}", i * (i + 2), " Indeed".repeat(i))}))
        .collect()
}

/// Conversations. (Words, not digits: the Qwen2 fixture's tokenizer.json
/// splits " 0" differently from the tokenizer class transformers builds,
/// a tokenizer matter outside the data code.)
fn chat_lines() -> Vec<Value> {
    let words = ["red", "green", "blue", "black", "white", "grey", "pink"];
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({"messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": format!("Name a colour other than {w}.")},
                {"role": "assistant", "content": format!("{}{}", words[(i + 1) % 7], " and more".repeat(i))},
            ]})
        })
        .collect()
}

fn reference(model: &Path, data: &Path, mask: bool, batch: usize, max_len: usize) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/dataset_reference.py");
    let out = Command::new(python())
        .arg(script)
        .arg(model)
        .arg(data)
        .arg(if mask { "1" } else { "0" })
        .arg(batch.to_string())
        .arg(max_len.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mlx_lm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn check(fixture: &str, lines: Vec<Value>, mask: bool, format: Format) {
    let model_dir = common::fixtures().join(fixture);
    let model = NativeModel::load(&model_dir).unwrap();
    let dir = scratch(&format!("{fixture}-{format:?}-{mask}"));
    write_lines(&dir, "train.jsonl", &lines);
    let enc = Encoder {
        tokenizer: model.tokenizer(),
        template: model.chat_template(),
        mask_prompt: mask,
    };
    let splits = enc.load_dir(&dir).unwrap();
    assert_eq!(splits.train.format, format);
    assert!(splits.valid.is_none());
    let (batch, max_len) = (2, 24);
    let r = reference(&model_dir, &dir, mask, batch, max_len);
    let ours: Vec<Vec<u64>> = splits
        .train
        .examples
        .iter()
        .map(|e| {
            let mut v: Vec<u64> = e.tokens.iter().map(|&t| t as u64).collect();
            v.push(e.offset as u64);
            v
        })
        .collect();
    let theirs: Vec<Vec<u64>> = serde_json::from_value(r["examples"].clone()).unwrap();
    assert_eq!(
        ours, theirs,
        "{fixture} {format:?} mask={mask}: tokens and offsets"
    );
    if mask {
        assert!(
            ours.iter().all(|e| *e.last().unwrap() > 0),
            "prompts are masked"
        );
    }

    let mut batches: Vec<Value> = batch_groups(&splits.train, batch)
        .unwrap()
        .iter()
        .map(|g| {
            let b = make_batch(&splits.train, g, max_len).unwrap();
            let (b_, l) = (b.tokens.shape()[0], b.tokens.shape()[1]);
            let ids = b.tokens.to_vec::<i32>().unwrap();
            let lens = b.lengths.to_vec::<i32>().unwrap();
            let rows: Vec<Vec<i32>> = ids.chunks(l as usize).map(<[i32]>::to_vec).collect();
            let lens: Vec<Vec<i32>> = lens.chunks(2).map(<[i32]>::to_vec).collect();
            assert_eq!(rows.len(), b_ as usize);
            json!([rows, lens])
        })
        .collect();
    batches.sort_by_key(|v| v.to_string());
    let mut expected: Vec<Value> = r["batches"].as_array().unwrap().clone();
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(batches, expected, "{fixture} {format:?}: batches");
}

#[test]
fn text_data_tokenises_and_batches_as_mlx_lm() {
    check("llama", text_lines(), false, Format::Text);
    check("qwen3", text_lines(), false, Format::Text);
}

#[test]
fn completion_data_tokenises_as_mlx_lm_with_and_without_masking() {
    check("llama", completion_lines(), false, Format::Completions);
    check("llama", completion_lines(), true, Format::Completions);
    check("qwen3", completion_lines(), true, Format::Completions);
}

#[test]
fn chat_data_tokenises_as_mlx_lm_with_and_without_masking() {
    check("qwen2", chat_lines(), false, Format::Chat);
    check("qwen2", chat_lines(), true, Format::Chat);
    check("llama", chat_lines(), true, Format::Chat);
}

fn load_err(dir: &Path, mask: bool) -> Error {
    let model = NativeModel::load(&common::fixtures().join("llama")).unwrap();
    Encoder {
        tokenizer: model.tokenizer(),
        template: model.chat_template(),
        mask_prompt: mask,
    }
    .load_dir(dir)
    .unwrap_err()
}

#[test]
fn bad_data_gets_errors_naming_the_file_and_line() {
    let dir = scratch("bad");
    let missing = load_err(&dir, false);
    assert!(
        matches!(&missing, Error::Dataset { path, line: None, .. } if path.ends_with("train.jsonl")),
        "{missing:?}"
    );
    assert!(missing.to_string().contains("train.jsonl"), "{missing}");

    std::fs::write(dir.join("train.jsonl"), "").unwrap();
    let empty = load_err(&dir, false);
    assert!(empty.to_string().contains("no examples"), "{empty}");

    std::fs::write(
        dir.join("train.jsonl"),
        "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n{\"text\": \"c\"\n",
    )
    .unwrap();
    let malformed = load_err(&dir, false);
    assert!(
        matches!(malformed, Error::Dataset { line: Some(4), .. }),
        "{malformed:?}"
    );
    assert!(
        malformed
            .to_string()
            .contains("train.jsonl:4: invalid JSON"),
        "{malformed}"
    );

    std::fs::write(
        dir.join("train.jsonl"),
        "{\"text\": \"a\"}\n{\"prompt\": \"b\"}\n",
    )
    .unwrap();
    let mixed = load_err(&dir, false);
    assert!(
        mixed
            .to_string()
            .contains("train.jsonl:2: expected a string `text`"),
        "{mixed}"
    );

    std::fs::write(dir.join("train.jsonl"), "{\"question\": \"a\"}\n").unwrap();
    let unknown = load_err(&dir, false);
    assert!(
        unknown.to_string().contains(":1: unsupported format"),
        "{unknown}"
    );

    std::fs::write(dir.join("train.jsonl"), "[1, 2]\n").unwrap();
    assert!(load_err(&dir, false)
        .to_string()
        .contains(":1: expected a JSON object"));

    std::fs::write(dir.join("train.jsonl"), "{\"text\": \"a\"}\n").unwrap();
    let masked_text = load_err(&dir, true);
    assert!(
        masked_text.to_string().contains("prompt masking"),
        "{masked_text}"
    );

    std::fs::write(dir.join("train.jsonl"), "{\"text\": \"a\"}\n").unwrap();
    std::fs::write(dir.join("valid.jsonl"), "{\"messages\": []}\n").unwrap();
    let empty_chat = load_err(&dir, false);
    assert!(
        empty_chat
            .to_string()
            .contains("valid.jsonl:1: `messages` is empty"),
        "{empty_chat}"
    );
}

#[test]
fn long_rows_are_truncated_and_reported() {
    let model = NativeModel::load(&common::fixtures().join("llama")).unwrap();
    let dir = scratch("long");
    write_lines(&dir, "train.jsonl", &text_lines());
    let enc = Encoder {
        tokenizer: model.tokenizer(),
        template: None,
        mask_prompt: false,
    };
    let ds = enc.load_dir(&dir).unwrap().train;
    let groups = batch_groups(&ds, 7).unwrap();
    let longest = ds.examples.iter().map(|e| e.tokens.len()).max().unwrap();
    let b = make_batch(&ds, &groups[0], 10).unwrap();
    assert_eq!(b.tokens.shape(), vec![7, 10]);
    assert_eq!(b.truncated_from, Some(longest));
    assert!(b
        .lengths
        .to_vec::<i32>()
        .unwrap()
        .chunks(2)
        .all(|l| l[1] <= 10));
    let whole = make_batch(&ds, &groups[0], 4096).unwrap();
    assert_eq!(whole.truncated_from, None);
    assert!(batch_groups(&ds, 8)
        .unwrap_err()
        .to_string()
        .contains("fewer than the batch size 8"));
}
