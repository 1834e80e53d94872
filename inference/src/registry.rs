//! Finding a backend for a model directory.

use std::path::Path;

use crate::{Backend, BackendRegistration, Error, LoadOptions, Result, TextModel};

/// Every registered backend, highest priority first.
pub fn backends() -> Vec<&'static dyn Backend> {
    let mut all: Vec<&'static dyn Backend> = inventory::iter::<BackendRegistration>
        .into_iter()
        .map(|r| r.backend)
        .collect();
    all.sort_by_key(|b| std::cmp::Reverse(b.priority()));
    all
}

/// Loads the model in `dir` with the highest-priority available backend that
/// accepts it.
///
/// ```no_run
/// let model = inference::load_model("models/qwen3-0.6b")?;
/// println!("{:?}", model.info());
/// # Ok::<(), inference::Error>(())
/// ```
pub fn load_model(dir: impl AsRef<Path>) -> Result<Box<dyn TextModel>> {
    load_model_with(dir, LoadOptions::default())
}

/// Loads the model in `dir`, honouring [`LoadOptions::backend`].
///
/// ```no_run
/// use inference::LoadOptions;
/// let model = inference::load_model_with("models/qwen3-0.6b", LoadOptions::default().backend("mlxlm"))?;
/// # Ok::<(), inference::Error>(())
/// ```
pub fn load_model_with(dir: impl AsRef<Path>, opts: LoadOptions) -> Result<Box<dyn TextModel>> {
    select_backend(&backends(), dir.as_ref(), &opts)
}

/// The selection rule behind [`load_model_with`], over an explicit list of
/// backends:
///
/// - a forced backend (`opts.backend`) must exist and be available, and its
///   load result is returned as is;
/// - otherwise available backends that accept `dir` are tried by priority;
///   one answering [`Error::Unsupported`] gives way to the next, any other
///   error is returned;
/// - when none loads it, [`Error::NoBackend`] lists each backend's reason.
pub fn select_backend(
    candidates: &[&dyn Backend],
    dir: &Path,
    opts: &LoadOptions,
) -> Result<Box<dyn TextModel>> {
    if !dir.exists() {
        return Err(Error::invalid_model(dir, crate::gguf::missing_model(dir)));
    }
    if let Some(name) = &opts.backend {
        let native = crate::native_backend_name();
        if (name == "metal" || name == "mlx")
            && name != native
            && !candidates.iter().any(|b| b.name() == name)
        {
            return Err(Error::BackendUnavailable {
                name: name.clone(),
                reason: format!(
                    "not available on this platform ({}); the native backend here is `{native}`",
                    if name == "metal" {
                        "Metal runs on Apple silicon macOS only"
                    } else {
                        "on Apple silicon the native backend is Metal"
                    }
                ),
            });
        }
        let backend = candidates
            .iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| Error::UnknownBackend {
                name: name.clone(),
                registered: candidates
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let status = backend.status();
        if !status.available {
            return Err(Error::BackendUnavailable {
                name: name.clone(),
                reason: status.reason.unwrap_or_else(|| "unknown reason".into()),
            });
        }
        return backend.load(dir, opts);
    }

    let mut ordered: Vec<&dyn Backend> = candidates.to_vec();
    ordered.sort_by_key(|b| std::cmp::Reverse(b.priority()));
    let mut reasons = Vec::new();
    for backend in ordered {
        let status = backend.status();
        if !status.available {
            let why = status.reason.unwrap_or_else(|| "unavailable".into());
            reasons.push(format!("{}: {why}", backend.name()));
            continue;
        }
        if !backend.accepts(dir) {
            reasons.push(format!(
                "{}: does not accept this directory",
                backend.name()
            ));
            continue;
        }
        match backend.load(dir, opts) {
            Err(Error::Unsupported(why)) => reasons.push(format!("{}: {why}", backend.name())),
            other => return other,
        }
    }
    let config = dir.join("config.json");
    if dir.is_dir() && !config.exists() && !reasons.is_empty() {
        return Err(Error::invalid_model(
            config,
            "missing (a model directory needs config.json)",
        ));
    }
    if reasons.is_empty() {
        reasons.push("no backend is registered".into());
    }
    Err(Error::NoBackend {
        path: dir.to_path_buf(),
        reasons: reasons.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendStatus, GenerateOptions, Message, Metrics, ModelInfo, TokenStream};

    struct Loaded(ModelInfo);

    impl TextModel for Loaded {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn generate<'a>(&'a mut self, _: &str, _: &GenerateOptions) -> TokenStream<'a> {
            TokenStream::failed(Error::Unsupported("test".into()))
        }
        fn chat<'a>(&'a mut self, _: &[Message], _: &GenerateOptions) -> TokenStream<'a> {
            TokenStream::failed(Error::Unsupported("test".into()))
        }
        fn metrics(&self) -> Metrics {
            Metrics::default()
        }
    }

    enum Load {
        Ok,
        Unsupported,
        Fail,
    }

    struct Fake {
        name: &'static str,
        priority: i32,
        available: bool,
        load: Load,
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn priority(&self) -> i32 {
            self.priority
        }
        fn status(&self) -> BackendStatus {
            if self.available {
                BackendStatus::available("1", "test")
            } else {
                BackendStatus::unavailable(format!("{} is switched off", self.name))
            }
        }
        fn load(&self, dir: &Path, _: &LoadOptions) -> Result<Box<dyn TextModel>> {
            match self.load {
                Load::Ok => Ok(Box::new(Loaded(ModelInfo {
                    backend: self.name.into(),
                    path: dir.to_path_buf(),
                    ..Default::default()
                }))),
                Load::Unsupported => Err(Error::Unsupported(format!("{} cannot", self.name))),
                Load::Fail => Err(Error::invalid_model(dir, "broken config.json")),
            }
        }
    }

    fn fake(name: &'static str, priority: i32, available: bool, load: Load) -> Fake {
        Fake {
            name,
            priority,
            available,
            load,
        }
    }

    /// A scratch model folder holding an empty `config.json`, removed when
    /// it drops.
    fn model_dir() -> test_support::ScratchDir {
        let dir = test_support::ScratchDir::new("inference-registry");
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        dir
    }

    fn chosen(list: &[&dyn Backend], dir: &Path, opts: &LoadOptions) -> Result<String> {
        select_backend(list, dir, opts).map(|m| m.info().backend.clone())
    }

    #[test]
    fn highest_priority_available_wins() {
        let dir = model_dir();
        let low = fake("low", 10, true, Load::Ok);
        let high = fake("high", 100, true, Load::Ok);
        let list: [&dyn Backend; 2] = [&low, &high];
        assert_eq!(
            chosen(&list, dir.path(), &LoadOptions::default()).unwrap(),
            "high"
        );
    }

    #[test]
    fn unavailable_backend_is_skipped() {
        let dir = model_dir();
        let low = fake("low", 10, true, Load::Ok);
        let off = fake("off", 100, false, Load::Ok);
        let list: [&dyn Backend; 2] = [&off, &low];
        assert_eq!(
            chosen(&list, dir.path(), &LoadOptions::default()).unwrap(),
            "low"
        );
    }

    #[test]
    fn unsupported_gives_way_to_the_next() {
        let dir = model_dir();
        let low = fake("low", 10, true, Load::Ok);
        let picky = fake("picky", 100, true, Load::Unsupported);
        let list: [&dyn Backend; 2] = [&picky, &low];
        assert_eq!(
            chosen(&list, dir.path(), &LoadOptions::default()).unwrap(),
            "low"
        );
    }

    #[test]
    fn a_real_load_error_is_returned() {
        let dir = model_dir();
        let low = fake("low", 10, true, Load::Ok);
        let broken = fake("broken", 100, true, Load::Fail);
        let list: [&dyn Backend; 2] = [&broken, &low];
        let err = chosen(&list, dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
    }

    #[test]
    fn forced_backend_is_used_even_with_lower_priority() {
        let dir = model_dir();
        let low = fake("low", 10, true, Load::Ok);
        let high = fake("high", 100, true, Load::Ok);
        let list: [&dyn Backend; 2] = [&low, &high];
        let opts = LoadOptions::default().backend("low");
        assert_eq!(chosen(&list, dir.path(), &opts).unwrap(), "low");
    }

    #[test]
    fn forced_unknown_or_unavailable_backend_is_a_clear_error() {
        let dir = model_dir();
        let off = fake("off", 10, false, Load::Ok);
        let list: [&dyn Backend; 1] = [&off];
        let err = chosen(&list, dir.path(), &LoadOptions::default().backend("nope")).unwrap_err();
        assert_eq!(err.to_string(), "unknown backend `nope` (registered: off)");
        let err = chosen(&list, dir.path(), &LoadOptions::default().backend("off")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backend `off` is not available: off is switched off"
        );
    }

    #[test]
    fn no_backend_lists_every_reason() {
        let dir = model_dir();
        let off = fake("off", 10, false, Load::Ok);
        let picky = fake("picky", 5, true, Load::Unsupported);
        let list: [&dyn Backend; 2] = [&off, &picky];
        let err = chosen(&list, dir.path(), &LoadOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("off: off is switched off"), "{text}");
        assert!(text.contains("picky: picky cannot"), "{text}");
        let err = chosen(&[], dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("no backend is registered"),
            "{err}"
        );
    }

    #[test]
    fn directory_without_config_is_not_accepted() {
        let dir = model_dir();
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        let any = fake("any", 1, true, Load::Ok);
        let list: [&dyn Backend; 1] = [&any];
        let err = chosen(&list, dir.path(), &LoadOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: missing (a model directory needs config.json)",
                dir.path().join("config.json").display()
            )
        );
    }

    #[test]
    fn the_other_platforms_native_backend_is_named_unavailable() {
        let dir = model_dir();
        let any = fake("any", 1, true, Load::Ok);
        let list: [&dyn Backend; 1] = [&any];
        let other = if crate::native_backend_name() == "mlx" {
            "metal"
        } else {
            "mlx"
        };
        let err = chosen(&list, dir.path(), &LoadOptions::default().backend(other)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not available on this platform"), "{text}");
        assert!(text.contains(crate::native_backend_name()), "{text}");
    }

    #[test]
    fn missing_directory_is_named() {
        let any = fake("any", 1, true, Load::Ok);
        let list: [&dyn Backend; 1] = [&any];
        let err = chosen(&list, Path::new("/no/such/model"), &LoadOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "/no/such/model: no such model directory");
    }
}
