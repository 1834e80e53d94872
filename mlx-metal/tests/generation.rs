//! Native generation against mlx_lm's recorded greedy answers on every
//! fixture, plus stop strings, cancellation and backend selection.

mod common;

use common::{fixture_models, fixtures, ids, reference};
use inference::{CancellationToken, GenerateOptions, LoadOptions, Message, StopReason, TextModel};
use mlx_metal::llm::NativeModel;

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).expect("messages as {role, content}")
}

#[test]
fn greedy_raw_and_chat_answers_equal_mlx_lm_on_every_fixture() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let mut model = NativeModel::load(&dir).unwrap();
        let opts =
            GenerateOptions::default().max_tokens(r["max_tokens"].as_u64().unwrap() as usize);
        for part in ["raw", "chat"] {
            let mut stream = if part == "raw" {
                model.generate(r["raw"]["prompt"].as_str().unwrap(), &opts)
            } else {
                model.chat(&messages(&r["chat"]["messages"]), &opts)
            };
            let tokens: Vec<_> = stream.by_ref().map(|t| t.unwrap()).collect();
            let reason = stream.stop_reason();
            drop(stream);
            let got: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            assert_eq!(
                got,
                ids(&r[part]["greedy_ids"]),
                "{part} ids of {}",
                dir.display()
            );
            let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
            assert_eq!(
                text,
                r[part]["greedy_text"].as_str().unwrap(),
                "{part} text of {}",
                dir.display()
            );
            assert_eq!(
                reason,
                StopReason::parse(r[part]["stop_reason"].as_str().unwrap())
            );
            let m = model.metrics();
            assert_eq!(
                m.prompt_tokens,
                r[part]["prompt_ids"].as_array().unwrap().len(),
                "{part} prompt of {}",
                dir.display()
            );
            assert_eq!(m.generated_tokens, got.len());
            // (peak memory is process-wide and other tests of this binary
            // reset it while they run; `cli/tests/generate.rs` checks the
            // figure in a process of its own)
            assert!(m.prompt_tps > 0.0, "{m:?}");
        }
        let p = model
            .chat_prompt(&messages(&r["chat"]["messages"]))
            .unwrap();
        assert_eq!(
            p,
            ids(&r["chat"]["prompt_ids"]),
            "chat prompt ids of {}",
            dir.display()
        );
    }
}

#[test]
fn answers_past_the_sliding_window_stay_identical() {
    let dir = fixtures().join("gemma3_text");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let window = config["sliding_window"].as_u64().unwrap() as usize;
    let r = reference(&dir);
    let expected = ids(&r["raw"]["greedy_ids"]);
    assert!(expected.len() + r["raw"]["prompt_ids"].as_array().unwrap().len() > 3 * window);
    let mut model = NativeModel::load(&dir).unwrap();
    // a prefill in chunks smaller than the window exercises the rotating cache's concat path
    let prompt = ids(&r["raw"]["prompt_ids"]);
    let chunked: Vec<u32> = {
        let arch = model.architecture();
        let tok = model.tokenizer();
        let opts = GenerateOptions::default().max_tokens(expected.len());
        let mut g =
            mlx_metal::llm::generate::Generation::start(arch, tok, &prompt, &opts, 3, false)
                .unwrap();
        std::iter::from_fn(|| g.next_token())
            .map(|t| t.unwrap().id)
            .collect()
    };
    assert_eq!(chunked, expected);
    let again: Vec<u32> = model
        .generate(
            r["raw"]["prompt"].as_str().unwrap(),
            &GenerateOptions::default().max_tokens(expected.len()),
        )
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!(again, expected);
}

#[test]
fn load_model_prefers_the_native_backend() {
    mlx_metal::ensure_registered();
    let model = inference::load_model(fixtures().join("qwen3")).unwrap();
    assert_eq!(model.info().backend, mlx_metal::backend_name());
    assert_eq!(model.info().architecture, "qwen3");
    assert_eq!(model.info().num_layers, Some(2));
    let q = inference::load_model_with(
        fixtures().join("llama-4bit"),
        LoadOptions::default().backend(mlx_metal::backend_name()),
    )
    .unwrap();
    assert_eq!(q.info().quantization_bits, Some(4));
}

#[test]
fn stop_strings_end_the_answer_before_them() {
    let dir = fixtures().join("qwen3");
    let r = reference(&dir);
    let full = r["raw"]["greedy_text"].as_str().unwrap();
    let start = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[start..].chars().take(3).collect();
    let cut = full.find(&stop).unwrap();
    let mut model = NativeModel::load(&dir).unwrap();
    let opts = GenerateOptions::default().max_tokens(40).stop(stop.clone());
    let mut stream = model.generate(r["raw"]["prompt"].as_str().unwrap(), &opts);
    let text: String = stream.by_ref().map(|t| t.unwrap().text).collect();
    assert_eq!(stream.stop_reason(), Some(StopReason::Stop));
    assert_eq!(text, &full[..cut], "stop {stop:?}");
}

#[test]
fn cancellation_stops_within_one_token() {
    let mut model = NativeModel::load(&fixtures().join("qwen3")).unwrap();
    let cancel = CancellationToken::new();
    let opts = GenerateOptions::default()
        .max_tokens(1000)
        .cancel(cancel.clone());
    let mut stream = model.generate("abc", &opts);
    let mut seen = 0;
    for token in stream.by_ref() {
        token.unwrap();
        seen += 1;
        if seen == 4 {
            cancel.cancel();
        }
    }
    assert_eq!(seen, 4);
    assert_eq!(stream.stop_reason(), Some(StopReason::Cancelled));
}

#[test]
fn max_tokens_and_zero_tokens() {
    let mut model = NativeModel::load(&fixtures().join("gemma3_text")).unwrap();
    let mut s = model.generate("abc", &GenerateOptions::default().max_tokens(5));
    assert_eq!(s.by_ref().count(), 5);
    assert_eq!(s.stop_reason(), Some(StopReason::MaxTokens));
    drop(s);
    let mut s = model.generate("abc", &GenerateOptions::default().max_tokens(0));
    assert_eq!(s.by_ref().count(), 0);
    assert_eq!(s.stop_reason(), Some(StopReason::MaxTokens));
}

#[test]
fn seeded_sampling_reproduces_and_differs_by_seed() {
    let mut model = NativeModel::load(&fixtures().join("llama")).unwrap();
    let run = |model: &mut NativeModel, seed| -> Vec<u32> {
        let opts = GenerateOptions::default()
            .max_tokens(16)
            .temperature(1.5)
            .seed(seed);
        model
            .generate("xyz", &opts)
            .map(|t| t.unwrap().id)
            .collect()
    };
    let a = run(&mut model, 1);
    assert_eq!(a, run(&mut model, 1));
    assert_ne!(a, run(&mut model, 2));
}

#[test]
fn chat_template_errors_are_clear() {
    let dir = fixtures().join("gemma3_text");
    let mut model = NativeModel::load(&dir).unwrap();
    // Gemma's template raises on roles that do not alternate
    let msgs = [Message::user("a"), Message::user("b")];
    let err = model
        .chat(&msgs, &GenerateOptions::default())
        .next()
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Conversation roles must alternate"),
        "{err}"
    );

    let bare = common::copy_model(&fixtures().join("llama"), "no-template");
    let cfg_path = bare.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let template = cfg
        .as_object_mut()
        .unwrap()
        .remove("chat_template")
        .unwrap();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut model = NativeModel::load(&bare).unwrap();
    let err = model
        .chat(&[Message::user("hi")], &GenerateOptions::default())
        .next()
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("no chat template")
            && err.to_string().contains("tokenizer_config.json"),
        "{err}"
    );

    // the same template from a separate chat_template.jinja gives the same prompt
    std::fs::write(bare.join("chat_template.jinja"), template.as_str().unwrap()).unwrap();
    let model = NativeModel::load(&bare).unwrap();
    let r = reference(&fixtures().join("llama"));
    assert_eq!(
        model
            .chat_prompt(&messages(&r["chat"]["messages"]))
            .unwrap(),
        ids(&r["chat"]["prompt_ids"])
    );
}
