//! The default model from the command line: `chat` with no model named
//! talks to SmolLM2, `models` lists it and an ollama store, and a missing
//! default model is one line that says how to get it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use test_support::ScratchDir;

fn cli(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("HOME", home)
        .env_remove("MLX_INFER_MODEL")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("MLX_INFER_CACHE")
        .env_remove("OLLAMA_MODELS")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

fn default_model() -> PathBuf {
    inference::discover::default_model().expect("run `cargo xtask default-model` first")
}

/// A fresh, empty home folder, removed when it drops.
fn home(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("home-{name}"))
}

/// The cache root holding the default model.
fn cache() -> PathBuf {
    default_model()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

#[test]
fn chat_without_a_model_talks_to_the_default_model() {
    let home = home("chat");
    let out = test_support::output_with_stdin(
        cli(&home)
            .args(["chat", "--max-tokens", "32"])
            .env("MLX_INFER_CACHE", cache()),
        b"What is the capital of France?",
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("the default model"), "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
}

#[test]
fn without_the_default_model_one_line_says_how_to_get_it() {
    let home = home("none");
    let out = cli(&home)
        .args(["generate", "--prompt", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cargo xtask default-model"), "{stderr}");
}

/// An ollama store with one manifest per `(name, tag, blob)`.
fn ollama_store(root: &Path, models: &[(&str, &str, &Path)]) -> PathBuf {
    let store = root.join(".ollama/models");
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    for (i, (name, tag, blob)) in models.iter().enumerate() {
        let digest = format!("{i:064x}");
        std::os::unix::fs::symlink(blob, store.join(format!("blobs/sha256-{digest}"))).unwrap();
        let dir = store
            .join("manifests/registry.ollama.ai/library")
            .join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "layers": [
                {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:ab"},
                {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{digest}")},
            ],
        });
        std::fs::write(dir.join(tag), manifest.to_string()).unwrap();
    }
    store
}

#[test]
fn models_lists_the_default_model_and_the_ollama_store() {
    let home = home("models");
    let not_gguf = home.join("notes.bin");
    std::fs::write(&not_gguf, "not a model").unwrap();
    ollama_store(
        &home,
        &[
            ("smollm2", "135m", &default_model()),
            ("other", "latest", &not_gguf),
        ],
    );
    let run = |extra: &[&str]| -> Vec<Value> {
        let out = cli(&home)
            .args(["models", "--json"])
            .args(extra)
            .env("MLX_INFER_CACHE", cache())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        test_support::json_lines(&out.stdout)
    };
    let listed = run(&[]);
    let default = listed
        .iter()
        .find(|m| m["source"] == "default")
        .expect("the default model is listed");
    assert_eq!(default["path"], default_model().display().to_string());
    assert_eq!(default["format"], "gguf");
    assert_eq!(default["backend"], "mlx");
    let ollama: Vec<&Value> = listed.iter().filter(|m| m["source"] == "ollama").collect();
    assert_eq!(ollama.len(), 1, "{listed:?}");
    assert_eq!(ollama[0]["name"], "smollm2:135m");
    assert_eq!(ollama[0]["backend"], "mlx");

    let everything = run(&["--all"]);
    let other = everything
        .iter()
        .find(|m| m["name"] == "other:latest")
        .expect("--all lists what no backend runs");
    assert_eq!(other["backend"], Value::Null);
}

#[test]
fn convert_errors_are_one_line() {
    let home = home("convert");
    let out = cli(&home)
        .args(["convert", "--gguf", "/no/such/model.gguf", "--out"])
        .arg(home.join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/no/such/model.gguf"), "{stderr}");
    assert!(!home.join("out").exists());
}
