//! Batched inference on every fixture: batch generation gives the same
//! greedy ids as single-prompt generation and as mlx_lm's `batch_generate`,
//! classification agrees with the first greedy token and its logits with
//! single-prompt logits, and rows joining or leaving mid-generation leave
//! the others unchanged.

mod common;

use common::{fixture_models, ids, reference};
use inference::{
    BatchEvent, BatchOptions, ClassifyOptions, GenerateOptions, Input, Message, TextModel,
};
use mlx_metal::llm::batch::Batch;
use mlx_metal::llm::NativeModel;
use mlx_metal::Array;

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).expect("messages as {role, content}")
}

/// The batch mlx_lm ran: its prompts and its greedy ids for each.
fn batch_reference(r: &serde_json::Value) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let lists = |key: &str| -> Vec<Vec<u32>> {
        r["batch"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect()
    };
    (lists("prompt_ids"), lists("greedy_ids"))
}

/// Greedy ids of one prompt, alone.
fn single(model: &mut NativeModel, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let arch = model.architecture();
    let mut caches = arch.make_caches();
    let mut ids = Vec::new();
    let mut input: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let eos = model.tokenizer().eos_ids().to_vec();
    for _ in 0..max_tokens {
        let n = input.len() as i32;
        let logits = arch
            .forward(&Array::from_slice(&input, &[1, n]).unwrap(), &mut caches)
            .unwrap();
        let next = logits
            .slice_axis(1, n - 1, n)
            .unwrap()
            .argmax(-1, false)
            .unwrap()
            .to_vec::<u32>()
            .unwrap()[0];
        if eos.contains(&next) {
            break;
        }
        ids.push(next);
        input = vec![next as i32];
    }
    ids
}

#[test]
fn batch_generation_equals_single_prompts_and_mlx_lm_batch_generate() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let max = r["max_tokens"].as_u64().unwrap() as usize;
        let mut model = NativeModel::load(&dir).unwrap();
        let (prompts, want) = batch_reference(&r);
        // The same inputs through the API: raw and chat as given, and the
        // short and long prompts as raw text that encodes to those ids.
        let raw = r["raw"]["prompt"].as_str().unwrap();
        let inputs = vec![
            Input::Prompt(raw.into()),
            Input::Chat(messages(&r["chat"]["messages"])),
        ];
        let opts = GenerateOptions::default().max_tokens(max);
        for batch_size in [1, 2, 4] {
            let done = model
                .generate_batch(
                    &inputs,
                    &opts,
                    &BatchOptions::default().batch_size(batch_size),
                )
                .collect_completions()
                .unwrap();
            assert_eq!(
                done[0].ids,
                ids(&r["raw"]["greedy_ids"]),
                "{} raw",
                dir.display()
            );
            assert_eq!(
                done[1].ids,
                ids(&r["chat"]["greedy_ids"]),
                "{} chat",
                dir.display()
            );
            assert_eq!(done[0].text, r["raw"]["greedy_text"].as_str().unwrap());
        }
        // All four prompts in one batch, straight through the engine.
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(
                single(&mut model, p, max),
                want[i],
                "{} prompt {i}: single-prompt ids vs mlx_lm's batch_generate",
                dir.display()
            );
        }
        let batch_ids = greedy_batch(&model, &prompts, max);
        assert_eq!(batch_ids, want, "{}: batch ids", dir.display());
    }
}

/// Greedy ids of `prompts` decoded together in one batch.
fn greedy_batch(model: &NativeModel, prompts: &[Vec<u32>], max: usize) -> Vec<Vec<u32>> {
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (mut batch, mut logits) = Batch::prefill(model.architecture(), &refs, 2048).unwrap();
    let eos = model.tokenizer().eos_ids().to_vec();
    let mut out = vec![Vec::new(); prompts.len()];
    let mut live: Vec<usize> = (0..prompts.len()).collect();
    for _ in 0..max {
        let next = logits.argmax(-1, false).unwrap();
        let ids = next.to_vec::<u32>().unwrap();
        let mut keep = Vec::new();
        for (r, &row) in live.iter().enumerate() {
            if !eos.contains(&ids[r]) {
                out[row].push(ids[r]);
                keep.push(r);
            }
        }
        if keep.is_empty() {
            break;
        }
        let tokens: Vec<i32> = keep.iter().map(|&r| ids[r] as i32).collect();
        if keep.len() != live.len() {
            batch.filter(&keep).unwrap();
            live = keep.iter().map(|&r| live[r]).collect();
        }
        logits = batch.step(&Array::from_vec(&tokens).unwrap()).unwrap();
    }
    out
}

#[test]
fn classification_matches_single_prompt_logits_and_the_first_greedy_token() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let mut model = NativeModel::load(&dir).unwrap();
        // Batch prefill logits of raw and chat prompts (different lengths,
        // so one is left-padded) against mlx_lm's single-prompt logits.
        let raw = ids(&r["raw"]["prompt_ids"]);
        let chat = ids(&r["chat"]["prompt_ids"]);
        let (_, logits) = Batch::prefill(model.architecture(), &[&raw, &chat], 2048).unwrap();
        let vocab = logits.dim(1).unwrap() as usize;
        let got = logits.to_vec::<f32>().unwrap();
        let float = r["quantization"].is_null();
        for (row, part) in ["raw", "chat"].iter().enumerate() {
            let want: Vec<f32> = r[part]["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let worst = got[row * vocab..(row + 1) * vocab]
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let tol = if float { 1e-4 } else { 1e-3 };
            assert!(worst <= tol, "{} {part}: max |diff| {worst}", dir.display());
        }

        let inputs = vec![
            Input::Prompt(r["raw"]["prompt"].as_str().unwrap().into()),
            Input::Chat(messages(&r["chat"]["messages"])),
        ];
        let labels = ["a", "the", "def"];
        let out = model
            .classify(&inputs, &ClassifyOptions::default().top_k(3).labels(labels))
            .unwrap();
        for (c, part) in out.iter().zip(["raw", "chat"]) {
            let first = ids(&r[part]["greedy_ids"]).first().copied();
            if let Some(first) = first {
                assert_eq!(c.top.id, first, "{} {part}", dir.display());
            }
            assert_eq!(c.top_k.len(), 3);
            assert_eq!(c.top_k[0].id, c.top.id);
            assert!(c.top_k.windows(2).all(|w| w[0].logprob >= w[1].logprob));
            assert_eq!(c.scores.len(), 3);
            let best = c.scores.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
            assert_eq!(c.label.as_deref(), Some(best.0.as_str()));
            assert!(c.scores.iter().all(|(_, p)| (0.0..=1.0).contains(p)));
        }
        assert_eq!(out[0].index, 0);
        assert_eq!(out[1].index, 1);
    }
}

#[test]
fn rows_joining_and_leaving_leave_the_others_unchanged() {
    for name in ["llama", "gemma3_text", "qwen3-4bit"] {
        let dir = common::fixtures().join(name);
        let r = reference(&dir);
        let model = NativeModel::load(&dir).unwrap();
        let (prompts, want) = batch_reference(&r);
        let steps = 12usize;
        let arch = model.architecture();
        // Rows 0 and 1 start; after 4 tokens row 0 leaves and rows 2 and 3
        // join (prefilled apart, merged in).
        let (mut batch, logits) = Batch::prefill(arch, &[&prompts[0], &prompts[1]], 2048).unwrap();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); 4];
        let mut live = vec![0usize, 1];
        let mut next = logits.argmax(-1, false).unwrap().to_vec::<u32>().unwrap();
        for step in 0..steps {
            for (r, &row) in live.iter().enumerate() {
                out[row].push(next[r]);
            }
            if step == 3 {
                batch.filter(&[1]).unwrap();
                let (joining, first) =
                    Batch::prefill(arch, &[&prompts[2], &prompts[3]], 2048).unwrap();
                batch.extend(joining).unwrap();
                let first = first.argmax(-1, false).unwrap().to_vec::<u32>().unwrap();
                let kept = next[1];
                let wrong = batch.step(&Array::from_vec(&[kept as i32]).unwrap());
                assert!(wrong.is_err(), "a step needs one token per row");
                let tokens = [kept as i32, first[0] as i32, first[1] as i32];
                live = vec![1, 2, 3];
                for (r, &row) in live.iter().enumerate().skip(1) {
                    out[row].push(tokens[r] as u32);
                }
                let logits = batch.step(&Array::from_vec(&tokens).unwrap()).unwrap();
                next = logits.argmax(-1, false).unwrap().to_vec::<u32>().unwrap();
                continue;
            }
            let tokens: Vec<i32> = next.iter().map(|&t| t as i32).collect();
            let logits = batch.step(&Array::from_vec(&tokens).unwrap()).unwrap();
            next = logits.argmax(-1, false).unwrap().to_vec::<u32>().unwrap();
        }
        for row in 0..4 {
            let n = out[row].len().min(want[row].len());
            assert_eq!(out[row][..n], want[row][..n], "{name} row {row}");
            assert!(n >= 4, "{name} row {row} generated {n}");
        }
    }
}

#[test]
fn continuous_batching_gives_each_input_its_own_answer() {
    // More inputs than rows: finished rows make room for waiting ones.
    let dir = common::fixtures().join("qwen2");
    let r = reference(&dir);
    let mut model = NativeModel::load(&dir).unwrap();
    let raw = r["raw"]["prompt"].as_str().unwrap().to_string();
    let inputs: Vec<Input> = vec![
        Input::Prompt(raw.clone()),
        Input::Prompt("def".into()),
        Input::Chat(messages(&r["chat"]["messages"])),
        Input::Prompt("import os".into()),
        Input::Prompt(raw),
    ];
    let opts = GenerateOptions::default().max_tokens(10);
    let mut events = model.generate_batch(&inputs, &opts, &BatchOptions::default().batch_size(2));
    let mut streamed: Vec<String> = vec![String::new(); inputs.len()];
    let mut done = Vec::new();
    for e in events.by_ref() {
        match e.unwrap() {
            BatchEvent::Token { index, token } => streamed[index].push_str(&token.text),
            BatchEvent::Done(c) => done.push(c),
            other => panic!("unexpected event {other:?}"),
        }
    }
    drop(events);
    done.sort_by_key(|c| c.index);
    assert_eq!(done.len(), inputs.len());
    for (c, input) in done.iter().zip(&inputs) {
        assert_eq!(streamed[c.index], c.text, "streamed text adds up");
        let mut stream = match input {
            Input::Prompt(p) => model.generate(p, &opts),
            Input::Chat(m) => model.chat(m, &opts),
        };
        let alone: Vec<u32> = stream.by_ref().map(|t| t.unwrap().id).collect();
        assert_eq!(c.ids, alone, "input {}", c.index);
    }
}

#[test]
fn inputs_tokenized_together_equal_mlx_lm_ids_in_input_order_on_every_fixture() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let model = NativeModel::load(&dir).unwrap();
        let raw = r["raw"]["prompt"].as_str().unwrap();
        let chat = messages(&r["chat"]["messages"]);
        let (raw_ids, chat_ids) = (ids(&r["raw"]["prompt_ids"]), ids(&r["chat"]["prompt_ids"]));
        // A prompt that already starts with the BOS token gets no second
        // one, as when encoded alone.
        let with_bos = model
            .tokenizer()
            .bos_token()
            .map(|bos| format!("{bos}{raw}"));
        let mut inputs = Vec::new();
        let mut want = Vec::new();
        for i in 0..64 {
            inputs.push(Input::Prompt(format!("{raw} {i}")));
            want.push(
                model
                    .tokenizer()
                    .encode_prompt(&format!("{raw} {i}"))
                    .unwrap(),
            );
            inputs.push(Input::Chat(chat.clone()));
            want.push(chat_ids.clone());
            inputs.push(Input::Prompt(raw.into()));
            want.push(raw_ids.clone());
            if let Some(p) = &with_bos {
                inputs.push(Input::Prompt(p.clone()));
                want.push(model.tokenizer().encode_prompt(p).unwrap());
            }
        }
        let got = model.encode_inputs(&inputs).unwrap();
        assert_eq!(got, want, "{}", dir.display());
        if let Some(p) = &with_bos {
            let bos = model.tokenizer().encode(p, false).unwrap()[0];
            let ids = &got[3];
            assert_eq!(ids[0], bos, "{}", dir.display());
            assert_ne!(ids.get(1), Some(&bos), "{}: BOS twice", dir.display());
        }
    }
}
