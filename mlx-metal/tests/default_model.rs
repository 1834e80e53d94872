//! The out-of-the-box model, SmolLM2-135M-Instruct as a 4-bit GGUF file
//! (`cargo xtask default-model`), loaded natively: real answers, low
//! perplexity on English prose, the same greedy ids and tokens as mlx_lm on
//! the directory `convert` writes, and damaged files refused with messages
//! that name the file and what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use inference::{GenerateOptions, Message, TextModel};
use mlx_metal::llm::tokenizer::Tokenizer;
use mlx_metal::llm::{gguf, NativeModel};
use mlx_metal::Array;

fn model_file() -> PathBuf {
    inference::discover::default_model().unwrap_or_else(|| {
        panic!(
            "the default model is not in the cache ({:?}): run `{}`",
            inference::discover::default_model_path(),
            inference::discover::DEFAULT_MODEL_COMMAND
        )
    })
}

/// A scratch folder (removed when it drops) and a path in it not yet made.
fn scratch(name: &str) -> (ScratchDir, PathBuf) {
    let scratch = ScratchDir::new(&format!("gguf-{name}"));
    let dir = scratch.join(name);
    (scratch, dir)
}

use test_support::{python, ScratchDir, ScratchFile};

const QUESTION: &str = "What is the capital of France?";

fn greedy_chat(model: &mut dyn TextModel, question: &str, max_tokens: usize) -> (Vec<u32>, String) {
    let opts = GenerateOptions::default().max_tokens(max_tokens);
    let tokens: Vec<_> = model
        .chat(&[Message::user(question)], &opts)
        .map(|t| t.unwrap())
        .collect();
    (
        tokens.iter().map(|t| t.id).collect(),
        tokens.iter().map(|t| t.text.as_str()).collect(),
    )
}

#[test]
fn answers_the_capital_question_through_load_model() {
    mlx_metal::ensure_registered();
    let mut model = inference::load_model(model_file()).unwrap();
    assert_eq!(model.info().architecture, "llama");
    assert_eq!(model.info().num_layers, Some(30));
    let (_, text) = greedy_chat(model.as_mut(), QUESTION, 48);
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn completes_prose_in_english() {
    let mut model = NativeModel::load(&model_file()).unwrap();
    let opts = GenerateOptions::default().max_tokens(24);
    let text: String = model
        .generate("The three primary colours are", &opts)
        .map(|t| t.unwrap().text)
        .collect();
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let english = [
        "the", "and", "red", "blue", "yellow", "green", "are", "of", "is", "colors", "colours",
        "a", "to", "primary",
    ];
    let known = words.iter().filter(|w| english.contains(w)).count();
    assert!(words.len() >= 5, "{text:?}");
    assert!(
        text.chars()
            .all(|c| c.is_ascii() || c.is_whitespace() || c == '’'),
        "{text:?}"
    );
    assert!(
        known * 4 >= words.len(),
        "too few common English words: {text:?}"
    );
}

const PROSE: &str = "The history of the city begins in the third century, when a small \
    settlement grew up around a bridge over the river. Merchants came to trade wool and \
    grain, and by the year 1200 the town had a market, a church and a wall. Over the \
    following centuries it became one of the most important ports in the country, and \
    its population grew quickly as people moved from the countryside to find work.";

/// Mean per-token perplexity of `ids` under the model (each token predicted
/// from those before it).
fn perplexity(model: &NativeModel, ids: &[u32]) -> f64 {
    let arch = model.architecture();
    let mut caches = arch.make_caches();
    let input: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let n = input.len() as i32;
    let logits = arch
        .forward(&Array::from_slice(&input, &[1, n]).unwrap(), &mut caches)
        .unwrap()
        .astype(mlx_metal::Dtype::Float32)
        .unwrap();
    let vocab = logits.dim(2).unwrap() as usize;
    let all = logits.to_vec::<f32>().unwrap();
    let mut nll = 0.0f64;
    for i in 0..ids.len() - 1 {
        let row = &all[i * vocab..(i + 1) * vocab];
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[ids[i + 1] as usize] as f64;
    }
    (nll / (ids.len() - 1) as f64).exp()
}

#[test]
fn perplexity_on_english_prose_is_low() {
    let model = NativeModel::load(&model_file()).unwrap();
    let ids = model.tokenizer().encode(PROSE, false).unwrap();
    let good = perplexity(&model, &ids);
    // The same text cut into single characters: valid ids, wrong tokenizer.
    let chars: Vec<u32> = PROSE
        .chars()
        .take(150)
        .map(|c| {
            let piece = if c == ' ' {
                "Ġ".to_string()
            } else {
                c.to_string()
            };
            model.tokenizer().encode(&piece, false).unwrap()[0]
        })
        .collect();
    let bad = perplexity(&model, &chars);
    eprintln!("perplexity: {good:.2} with the tokenizer, {bad:.2} with character ids");
    assert!(good < 30.0, "perplexity {good:.2}");
    assert!(
        bad > 4.0 * good,
        "character ids {bad:.2} vs tokens {good:.2}"
    );
}

/// Runs mlx_lm on the converted directory: prompt ids and greedy ids of the
/// chat question, and the ids of each probe string.
fn mlx_lm_answers(dir: &Path, probes: &[&str], max_tokens: usize) -> serde_json::Value {
    let script = r#"
import json, sys
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
model, tok = load(sys.argv[1])
question, probes, max_tokens = json.loads(sys.argv[2])
prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
ids = []
for token, _ in generate_step(mx.array(prompt), model, max_tokens=max_tokens, sampler=lambda x: mx.argmax(x, axis=-1)):
    token = int(token)
    if token in tok.eos_token_ids:
        break
    ids.append(token)
encoded = [tok.encode(p, add_special_tokens=False) for p in probes]
print(json.dumps({"prompt": prompt, "greedy": ids, "probes": encoded}))
"#;
    let args = serde_json::json!([QUESTION, probes, max_tokens]).to_string();
    let out = Command::new(python())
        .args(["-c", script])
        .arg(dir)
        .arg(args)
        .output()
        .expect("run the mlx_lm environment's python");
    assert!(
        out.status.success(),
        "mlx_lm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("mlx_lm printed JSON")
}

const PROBES: &[&str] = &[
    "héllo wörld — naïve café, 日本語のテキスト, emoji 🎉👍",
    "digits 1234567890 and 3.14159, 2024-11-23, $1,000,000",
    "  leading spaces,\ttabs,\n\n\nnewlines   and    runs     of spaces  ",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # comment",
];

#[test]
fn greedy_ids_and_tokens_equal_mlx_lm_on_the_converted_directory() {
    let file = model_file();
    let (_scratch, dir) = scratch("converted");
    gguf::convert(&file, &dir).unwrap();
    let reference = mlx_lm_answers(&dir, PROBES, 32);
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };

    // The same weights as mlx_lm's, scales in their stored float16.
    let mut model = NativeModel::load_with_dtype(&file, inference::ComputeDtype::Model).unwrap();
    let prompt = model.chat_prompt(&[Message::user(QUESTION)]).unwrap();
    assert_eq!(prompt, ids(&reference["prompt"]), "chat prompt ids");
    let (greedy, text) = greedy_chat(&mut model, QUESTION, 32);
    assert_eq!(greedy, ids(&reference["greedy"]), "greedy ids ({text:?})");

    // The tokenizer built from the GGUF metadata, the tokenizer.json that
    // convert wrote (read back by the tokenizers crate here, by Hugging Face's
    // Python tokenizer in mlx_lm) agree on every probe.
    let (config, _) = mlx_metal::llm::config::Config::load(&dir).unwrap();
    let written = Tokenizer::load(&dir, &config).unwrap();
    for (probe, expected) in PROBES.iter().zip(reference["probes"].as_array().unwrap()) {
        let from_gguf = model.tokenizer().encode(probe, false).unwrap();
        assert_eq!(
            from_gguf,
            ids(expected),
            "GGUF tokenizer vs mlx_lm on {probe:?}"
        );
        assert_eq!(
            written.encode(probe, false).unwrap(),
            from_gguf,
            "written tokenizer.json on {probe:?}"
        );
        assert_eq!(model.tokenizer().decode(&from_gguf).unwrap(), *probe);
    }
}

#[test]
fn convert_never_overwrites() {
    let file = model_file();
    let (_scratch, dir) = scratch("occupied");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let e = gguf::convert(&file, &dir).unwrap_err().to_string();
    assert!(e.contains("already exists and is not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let (_never, never) = scratch("never");
    let e = gguf::convert(&dir.join("none.gguf"), &never)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.gguf"), "{e}");
}

/// A copy of the model with `edit` applied to its bytes, removed when the
/// returned guard drops.
fn damaged(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> ScratchFile {
    let mut bytes = std::fs::read(model_file()).unwrap();
    edit(&mut bytes);
    ScratchFile::with_contents(&format!("{name}.gguf"), bytes)
}

/// Where `needle` first occurs in the header.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes[..8 << 20]
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the header", String::from_utf8_lossy(needle)))
}

/// The byte offset just after a tensor entry's name in the tensor table.
fn after_tensor_name(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend(name.as_bytes());
    find(bytes, &needle) + needle.len()
}

fn load_error(path: &Path) -> String {
    let e = match NativeModel::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&path.display().to_string()),
        "names the file: {e}"
    );
    e
}

#[test]
fn damaged_files_are_errors_naming_the_file_and_the_fault() {
    let truncated = damaged("truncated", |b| b.truncate(b.len() / 2));
    let e = load_error(&truncated);
    assert!(e.contains("truncated"), "{e}");

    let magic = damaged("magic", |b| b[..4].copy_from_slice(b"GGJT"));
    assert!(load_error(&magic).contains("not a GGUF file"));

    let key = damaged("missing-key", |b| {
        let at = find(b, b"llama.block_count");
        b[at + "llama.block_coun".len()] = b'_';
    });
    let e = load_error(&key);
    assert!(e.contains("`llama.block_count` is missing"), "{e}");

    let arch = damaged("architecture", |b| {
        let at = find(b, b"general.architecture") + "general.architecture".len() + 4 + 8;
        b[at..at + 5].copy_from_slice(b"mamba");
    });
    let e = load_error(&arch);
    assert!(e.contains("GGUF architecture `mamba`"), "{e}");

    // blk.0.attn_norm.weight is F32; call it I32 (same size, not a float).
    let kind = damaged("type", |b| {
        let at = after_tensor_name(b, "blk.0.attn_norm.weight") + 4 + 8;
        b[at..at + 4].copy_from_slice(&26u32.to_le_bytes());
    });
    let e = load_error(&kind);
    assert!(e.contains("tensor `blk.0.attn_norm.weight` is I32"), "{e}");

    // blk.0.attn_v.weight is [576 in, 192 out]; say 160 rows (less data, so
    // the table stays valid) — the shape no longer fits the metadata.
    let shape = damaged("shape", |b| {
        let at = after_tensor_name(b, "blk.0.attn_v.weight") + 4 + 8;
        b[at..at + 8].copy_from_slice(&160u64.to_le_bytes());
    });
    let e = load_error(&shape);
    assert!(e.contains("model.layers.0.self_attn.v_proj"), "{e}");
}
