//! Finding model directories on this machine (the Hugging Face cache).

use std::path::{Path, PathBuf};

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

/// Text models in a hub cache (`models--ORG--NAME/snapshots/REV/`), sorted
/// by repository name.
pub fn find_models(cache: &Path) -> Vec<PathBuf> {
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
        let Ok(snapshots) = std::fs::read_dir(repo.join("snapshots")) else {
            continue;
        };
        let mut snaps: Vec<PathBuf> = snapshots.flatten().map(|e| e.path()).collect();
        snaps.sort();
        found.extend(snaps.into_iter().filter(|s| is_text_model(s)));
    }
    found
}

/// The first text model in any hub cache.
pub fn first_cached_model() -> Option<PathBuf> {
    hf_cache_dirs().iter().flat_map(|d| find_models(d)).next()
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
        let root = std::env::temp_dir().join(format!("inference-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
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
        let _ = std::fs::remove_dir_all(&root);
    }
}
