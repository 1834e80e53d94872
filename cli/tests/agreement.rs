//! Both backends, on every fixture, give the same answer to the same
//! request: token ids, text (leading spaces included), the generated count
//! with a stop string, the stop reason, and out-of-range options handled
//! alike.
#![cfg(all(feature = "metal", feature = "mlxlm"))]

use inference::{GenerateOptions, LoadOptions, Message, StopReason, TextModel, TokenStream};
use test_support::fixture_models;

/// What a backend answered.
#[derive(Debug, PartialEq)]
struct Answer {
    ids: Vec<u32>,
    text: String,
    generated: usize,
    reason: Option<StopReason>,
}

fn answer(
    model: &mut dyn TextModel,
    run: impl FnOnce(&mut dyn TextModel) -> TokenStream<'_>,
) -> Result<Answer, String> {
    let mut ids = Vec::new();
    let mut text = String::new();
    let reason = {
        let mut stream = run(model);
        for token in stream.by_ref() {
            let token = token.map_err(|e| e.to_string())?;
            ids.push(token.id);
            text.push_str(&token.text);
        }
        stream.stop_reason()
    };
    Ok(Answer {
        ids,
        text,
        generated: model.metrics().generated_tokens,
        reason,
    })
}

fn load(dir: &std::path::Path, backend: &str) -> Box<dyn TextModel> {
    inference::load_model_with(dir, LoadOptions::default().backend(backend))
        .unwrap_or_else(|e| panic!("{backend} loads {}: {e}", dir.display()))
}

#[test]
fn backends_agree_on_every_fixture() {
    mlx_metal::ensure_registered();
    mlxlm::ensure_registered();
    if std::env::var_os("MLXLM_PYTHON").is_none() {
        std::env::set_var("MLXLM_PYTHON", test_support::python());
    }
    let native = inference::native_backend_name();
    let greedy = GenerateOptions::default().max_tokens(8);
    let cases: Vec<(&str, GenerateOptions)> = vec![
        ("greedy", greedy.clone()),
        ("stop string", greedy.clone().stop("e")),
        ("stop string across tokens", greedy.clone().stop("o w")),
        (
            "top_k beyond the vocabulary",
            GenerateOptions::default()
                .max_tokens(6)
                .temperature(0.8)
                .top_k(100_000)
                .seed(7),
        ),
        ("no tokens", GenerateOptions::default().max_tokens(0)),
    ];
    for dir in fixture_models() {
        let mut a = load(&dir, native);
        let mut b = load(&dir, "mlxlm");
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for (case, opts) in &cases {
            for prompt in ["The quick brown", "hello world"] {
                let x = answer(a.as_mut(), |m| m.generate(prompt, opts));
                let y = answer(b.as_mut(), |m| m.generate(prompt, opts));
                assert_eq!(x, y, "{name}, {case}, prompt {prompt:?}: {native} vs mlxlm");
            }
        }
        let chat = [Message::user("Tell me a story")];
        let x = answer(a.as_mut(), |m| m.chat(&chat, &greedy));
        let y = answer(b.as_mut(), |m| m.chat(&chat, &greedy));
        assert_eq!(x, y, "{name}, chat: {native} vs mlxlm");
        // the same refusals, with the same words
        for (what, x, y) in [
            (
                "empty prompt",
                answer(a.as_mut(), |m| m.generate("", &greedy)),
                answer(b.as_mut(), |m| m.generate("", &greedy)),
            ),
            (
                "empty message",
                answer(a.as_mut(), |m| m.chat(&[Message::user(" ")], &greedy)),
                answer(b.as_mut(), |m| m.chat(&[Message::user(" ")], &greedy)),
            ),
            (
                "infinite temperature",
                answer(a.as_mut(), |m| {
                    m.generate("hi", &greedy.clone().temperature(f32::INFINITY))
                }),
                answer(b.as_mut(), |m| {
                    m.generate("hi", &greedy.clone().temperature(f32::INFINITY))
                }),
            ),
            (
                "over --max-context",
                answer(a.as_mut(), |m| {
                    m.generate("hello world", &greedy.clone().max_context(1))
                }),
                answer(b.as_mut(), |m| {
                    m.generate("hello world", &greedy.clone().max_context(1))
                }),
            ),
        ] {
            let (x, y) = (x.unwrap_err(), y.unwrap_err());
            assert_eq!(x, y, "{name}, {what}");
        }
    }
}
