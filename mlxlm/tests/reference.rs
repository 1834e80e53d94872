//! The mlxlm backend against mlx_lm's own recorded answers on every fixture.

mod common;

use inference::{GenerateOptions, LoadOptions, Message, StopReason};

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).expect("messages as {role, content}")
}

#[test]
fn greedy_raw_and_chat_ids_equal_mlx_lm_on_every_fixture() {
    common::use_fixture_python();
    for dir in common::models() {
        let r = common::reference(&dir);
        let mut model =
            inference::load_model_with(&dir, LoadOptions::default().backend("mlxlm")).unwrap();
        assert_eq!(model.info().backend, "mlxlm");
        assert_eq!(model.info().architecture, r["model_type"].as_str().unwrap());
        let max = r["max_tokens"].as_u64().unwrap() as usize;
        let opts = GenerateOptions::default().max_tokens(max);

        let mut stream = model.generate(r["raw"]["prompt"].as_str().unwrap(), &opts);
        let tokens: Vec<_> = stream.by_ref().map(|t| t.unwrap()).collect();
        let expected_reason = StopReason::parse(r["raw"]["stop_reason"].as_str().unwrap());
        assert_eq!(stream.stop_reason(), expected_reason, "{}", dir.display());
        drop(stream);
        let got: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(
            got,
            common::ids(&r["raw"]["greedy_ids"]),
            "raw ids of {}",
            dir.display()
        );
        let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
        // the tokenizer's decode of the ids, as on the native backend (not
        // mlx_lm's streaming BPE detokenizer, which drops a leading space)
        assert_eq!(
            text,
            r["raw"]["greedy_text"].as_str().unwrap(),
            "raw text of {}",
            dir.display()
        );
        let m = model.metrics();
        assert_eq!(
            m.prompt_tokens,
            r["raw"]["prompt_ids"].as_array().unwrap().len()
        );
        assert_eq!(m.generated_tokens, got.len());
        assert!(m.generation_tps > 0.0 && m.peak_memory_bytes > 0, "{m:?}");

        let chat = messages(&r["chat"]["messages"]);
        let tokens: Vec<_> = model.chat(&chat, &opts).map(|t| t.unwrap()).collect();
        let got: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(
            got,
            common::ids(&r["chat"]["greedy_ids"]),
            "chat ids of {}",
            dir.display()
        );
        let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            text,
            r["chat"]["greedy_text"].as_str().unwrap(),
            "chat text of {}",
            dir.display()
        );
        assert_eq!(
            model.metrics().prompt_tokens,
            r["chat"]["prompt_ids"].as_array().unwrap().len(),
            "chat prompt of {}",
            dir.display()
        );
    }
}
