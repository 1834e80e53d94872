//! Cancellation, stop strings, a killed process, bad directories, Python
//! exceptions and process cleanup.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inference::{
    CancellationToken, Error, GenerateOptions, LoadOptions, Message, StopReason, TextModel,
};
use mlxlm::MlxLmModel;
use test_support::ScratchDir;

fn llama() -> PathBuf {
    common::use_fixture_python();
    common::fixtures().join("llama")
}

fn temp_dir(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("mlxlm-{name}"))
}

fn copy_model(from: &Path, name: &str) -> ScratchDir {
    ScratchDir::copy_of(from, &format!("mlxlm-{name}"))
}

#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie shows state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

#[cfg(target_os = "linux")]
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn cancellation_stops_within_one_token() {
    let mut model = MlxLmModel::load(&llama()).unwrap();
    let cancel = CancellationToken::new();
    let opts = GenerateOptions::default()
        .max_tokens(10_000)
        .cancel(cancel.clone());
    let mut stream = model.generate("Once upon a time", &opts);
    let mut seen = 0;
    for token in stream.by_ref() {
        token.unwrap();
        seen += 1;
        if seen == 3 {
            cancel.cancel();
        }
    }
    assert_eq!(seen, 3, "no token after cancel() returned");
    assert_eq!(stream.stop_reason(), Some(StopReason::Cancelled));
    drop(stream);
    assert!(model.metrics().generated_tokens < 10_000);
    // the model is still usable
    let text = model
        .generate("x", &GenerateOptions::default().max_tokens(3))
        .collect_text();
    assert!(text.is_ok(), "{text:?}");
}

#[test]
fn a_dropped_stream_leaves_the_channel_clean() {
    let dir = llama();
    let r = common::reference(&dir);
    let mut model = MlxLmModel::load(&dir).unwrap();
    let mut stream = model.generate("abc", &GenerateOptions::default().max_tokens(10_000));
    stream.next().unwrap().unwrap();
    drop(stream);
    let prompt = r["raw"]["prompt"].as_str().unwrap();
    let ids: Vec<u32> = model
        .generate(prompt, &GenerateOptions::default().max_tokens(5))
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!(ids, common::ids(&r["raw"]["greedy_ids"])[..5]);
}

#[test]
fn stop_strings_end_the_stream_before_the_stop_text() {
    let dir = llama();
    let r = common::reference(&dir);
    let full = r["raw"]["greedy_text"].as_str().unwrap();
    // a stop string taken from the middle of the known answer
    let start = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[start..].chars().take(3).collect();
    let cut = full.find(&stop).unwrap();
    let mut model = MlxLmModel::load(&dir).unwrap();
    let opts = GenerateOptions::default().max_tokens(40).stop(stop.clone());
    let mut stream = model.generate(r["raw"]["prompt"].as_str().unwrap(), &opts);
    let text: String = stream.by_ref().map(|t| t.unwrap().text).collect();
    assert_eq!(stream.stop_reason(), Some(StopReason::Stop));
    assert_eq!(text, &full[..cut], "stop {stop:?}");
}

#[test]
fn a_killed_process_ends_the_stream_with_an_error() {
    let mut model = MlxLmModel::load(&llama()).unwrap();
    let pid = model.process_id();
    let mut stream = model.generate("abc", &GenerateOptions::default().max_tokens(100_000));
    stream.next().unwrap().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let err = loop {
        match stream.next() {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("stream ended without an error"),
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains("exited unexpectedly"), "{text}");
    assert!(stream.next().is_none());
}

/// Reads process states from `/proc` (Linux only).
#[cfg(target_os = "linux")]
#[test]
fn dropping_the_model_reaps_the_process() {
    let model = MlxLmModel::load(&llama()).unwrap();
    let pid = model.process_id();
    assert!(alive(pid));
    drop(model);
    assert!(reaped(pid), "process {pid} still exists after drop");
}

#[test]
fn bad_directories_are_errors_naming_them() {
    common::use_fixture_python();
    let opts = || LoadOptions::default().backend("mlxlm");
    let missing = Path::new("/no/such/model/dir");
    let err = inference::load_model_with(missing, opts()).err().unwrap();
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/model/dir"), "{err}");

    let empty = temp_dir("empty");
    let err = MlxLmModel::load(&empty).err().unwrap();
    assert!(err.to_string().contains("no config.json"), "{err}");

    let bad = copy_model(&llama(), "bad-config");
    std::fs::write(bad.join("config.json"), r#"{"model_type": "no_such_arch"}"#).unwrap();
    let err = inference::load_model_with(&bad, opts()).err().unwrap();
    assert!(
        matches!(&err, Error::InvalidModel { path, .. } if path == bad.path()),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_arch"), "{err}");
}

#[test]
fn a_python_exception_ends_the_stream_with_its_message() {
    let dir = copy_model(&llama(), "no-template");
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut model = MlxLmModel::load(&dir).unwrap();
    let mut stream = model.chat(&[Message::user("hi")], &GenerateOptions::default());
    let err = stream.next().unwrap().unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
    assert!(stream.next().is_none());
    drop(stream);
    // the bridge survives an exception
    assert!(model
        .generate("x", &GenerateOptions::default().max_tokens(2))
        .collect_text()
        .is_ok());
}

#[test]
fn invalid_options_are_rejected_before_generation() {
    let mut model = MlxLmModel::load(&llama()).unwrap();
    let err = model
        .generate("x", &GenerateOptions::default().top_p(2.0))
        .next()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut model = MlxLmModel::load(&llama()).unwrap();
    let opts = GenerateOptions::default()
        .max_tokens(12)
        .temperature(1.0)
        .top_k(20)
        .seed(7);
    let a: Vec<u32> = model
        .generate("abc", &opts)
        .map(|t| t.unwrap().id)
        .collect();
    let b: Vec<u32> = model
        .generate("abc", &opts)
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!(a, b);
    assert_eq!(a.len(), 12);
}

#[test]
fn the_backend_reports_mlx_versions() {
    common::use_fixture_python();
    let status = inference::backends()
        .into_iter()
        .find(|b| b.name() == "mlxlm")
        .unwrap()
        .status();
    assert!(status.available, "{status:?}");
    assert_eq!(status.version.as_deref(), Some("0.32.2"));
    let _: &dyn TextModel = &MlxLmModel::load(&llama()).unwrap();
}
