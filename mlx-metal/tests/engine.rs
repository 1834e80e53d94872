//! The serving engine on the fixtures: requests joining and leaving a
//! running batch give what each gives alone through `generate`/`chat`;
//! cancel, chunked prefill, seeded sampling, logprobs, the prefix cache
//! and bad submits.

mod common;

use std::collections::BTreeMap;

use common::{fixture_models, fixtures, reference};
use inference::{
    Engine, EngineEvent, EngineOptions, EngineRequest, Error, GenerateOptions, Input, LoadOptions,
    Message, StopReason, TextModel, TokenLogprobs,
};
use mlx_metal::llm::NativeModel;
use mlx_metal::train::adapter;
use mlx_metal::train::finetune::{self, AdapterConfig, LoraParameters};
use mlx_metal::{random, Array, Dtype};
use test_support::ScratchDir;

/// What the engine reported for one request.
#[derive(Debug, Default, Clone)]
struct Outcome {
    started: Option<(usize, usize)>,
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<TokenLogprobs>,
    done: Option<(StopReason, usize, usize, usize)>,
    failed: Option<String>,
    /// The step at which each token arrived.
    steps: Vec<usize>,
}

/// Feeds `events` into `outcomes` (step `step`).
fn record(outcomes: &mut BTreeMap<u64, Outcome>, events: Vec<EngineEvent>, step: usize) {
    for e in events {
        let o = outcomes.entry(e.id()).or_default();
        assert!(
            o.done.is_none() && o.failed.is_none(),
            "event after the end: {e:?}"
        );
        match e {
            EngineEvent::Started {
                prompt_tokens,
                cached_tokens,
                ..
            } => o.started = Some((prompt_tokens, cached_tokens)),
            EngineEvent::Token {
                token, logprobs, ..
            } => {
                o.ids.push(token.id);
                o.text.push_str(&token.text);
                o.logprobs.extend(logprobs);
                o.steps.push(step);
            }
            EngineEvent::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                ..
            } => o.done = Some((reason, prompt_tokens, completion_tokens, cached_tokens)),
            EngineEvent::Failed { error, .. } => o.failed = Some(error.to_string()),
            _ => {}
        }
    }
}

/// Runs `engine`, submitting each request at its step, until nothing is
/// pending; returns every request's outcome.
fn run(
    engine: &mut dyn Engine,
    mut schedule: Vec<(usize, u64, EngineRequest)>,
) -> BTreeMap<u64, Outcome> {
    schedule.sort_by_key(|(s, id, _)| (*s, *id));
    let mut schedule = std::collections::VecDeque::from(schedule);
    let mut outcomes = BTreeMap::new();
    let mut step = 0;
    while !schedule.is_empty() || engine.pending() > 0 {
        while schedule.front().is_some_and(|(s, _, _)| *s <= step) {
            let (_, id, request) = schedule.pop_front().unwrap();
            engine.submit(id, request).unwrap();
        }
        let events = engine.step().unwrap();
        record(&mut outcomes, events, step);
        step += 1;
        assert!(step < 10_000, "the engine does not finish");
    }
    outcomes
}

/// The ids and text of one answer.
type Answer = (Vec<u32>, String);

/// Ids and text of one request through `generate` or `chat`.
fn alone(model: &mut dyn TextModel, input: &Input, opts: &GenerateOptions) -> Answer {
    let stream = match input {
        Input::Prompt(p) => model.generate(p, opts),
        Input::Chat(m) => model.chat(m, opts),
    };
    let tokens: Vec<_> = stream.map(|t| t.unwrap()).collect();
    (
        tokens.iter().map(|t| t.id).collect(),
        tokens.iter().map(|t| t.text.as_str()).collect(),
    )
}

/// Eight inputs of different lengths: prefixes of the fixture's raw
/// prompt, repeated, and its chat conversation.
fn inputs(dir: &std::path::Path) -> Vec<Input> {
    let r = reference(dir);
    let raw = r["raw"]["prompt"].as_str().unwrap().to_string();
    let messages: Vec<Message> = serde_json::from_value(r["chat"]["messages"].clone()).unwrap();
    let words: Vec<&str> = raw.split(' ').collect();
    let mut out = vec![Input::Chat(messages)];
    for n in [1, 2, 4, 6] {
        out.push(Input::Prompt(words[..n.min(words.len())].join(" ")));
    }
    out.push(Input::Prompt(raw.clone()));
    out.push(Input::Prompt(format!("{raw} {raw}")));
    out.push(Input::Prompt(format!("{raw}\n{raw}\n{raw}")));
    out
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions::default().max_tokens(max_tokens)
}

#[test]
fn greedy_requests_equal_single_generation_alone_and_among_31_others_on_every_fixture() {
    const MAX: usize = 5;
    for dir in fixture_models() {
        let mut model = NativeModel::load(&dir).unwrap();
        let inputs = inputs(&dir);
        let want: Vec<_> = inputs
            .iter()
            .map(|i| alone(&mut model, i, &greedy(MAX)))
            .collect();
        let mut engine = model
            .engine(&EngineOptions::default().prompt_cache_size(0))
            .unwrap();
        // Alone: one request at a time.
        for (i, input) in inputs.iter().enumerate() {
            let out = run(
                engine.as_mut(),
                vec![(0, 0, EngineRequest::new(input.clone(), greedy(MAX)))],
            );
            assert_eq!(out[&0].ids, want[i].0, "{}: input {i} alone", dir.display());
            assert_eq!(
                out[&0].text,
                want[i].1,
                "{}: input {i} alone",
                dir.display()
            );
        }
        // 32 requests, submitted over the first steps (some join while
        // others decode), with different token budgets.
        let schedule: Vec<_> = (0..32u64)
            .map(|id| {
                let i = id as usize % inputs.len();
                let step = (id as usize * 3) % 11;
                let request = EngineRequest::new(inputs[i].clone(), greedy(MAX));
                (step, id, request)
            })
            .collect();
        let out = run(engine.as_mut(), schedule);
        assert_eq!(out.len(), 32);
        for (id, o) in &out {
            let i = *id as usize % inputs.len();
            assert_eq!(o.ids, want[i].0, "{}: request {id}", dir.display());
            assert_eq!(o.text, want[i].1, "{}: request {id}", dir.display());
            let (reason, prompt, completion, cached) = o.done.unwrap();
            assert!(matches!(reason, StopReason::MaxTokens | StopReason::Eos));
            assert_eq!(completion, o.ids.len());
            assert_eq!(cached, 0);
            assert_eq!(o.started, Some((prompt, 0)));
        }
        assert_eq!(engine.running(), 0);
        // Again with the prefix cache on: repeated and shared prompts start
        // from stored caches and give the same answers.
        drop(engine);
        let mut engine = model.engine(&EngineOptions::default()).unwrap();
        let schedule: Vec<_> = (0..32u64)
            .map(|id| {
                let i = id as usize % inputs.len();
                let request = EngineRequest::new(inputs[i].clone(), greedy(MAX));
                ((id as usize * 5) % 13, id, request)
            })
            .collect();
        let out = run(engine.as_mut(), schedule);
        let mut hits = 0;
        for (id, o) in &out {
            let i = *id as usize % inputs.len();
            assert_eq!(o.ids, want[i].0, "{}: request {id}, cached", dir.display());
            assert_eq!(o.text, want[i].1, "{}: request {id}, cached", dir.display());
            hits += usize::from(o.started.unwrap().1 > 0);
        }
        assert!(hits >= 8, "{}: {hits} prefix cache hits", dir.display());
    }
}

#[test]
fn cancel_frees_the_row_at_the_next_step_and_leaves_the_others_unchanged() {
    let dir = &fixture_models()[0];
    let mut model = NativeModel::load(dir).unwrap();
    let inputs = inputs(dir);
    let want: Vec<_> = inputs[..3]
        .iter()
        .map(|i| alone(&mut model, i, &greedy(12)))
        .collect();
    let mut engine = model.engine(&EngineOptions::default()).unwrap();
    for (id, input) in inputs[..3].iter().enumerate() {
        engine
            .submit(id as u64, EngineRequest::new(input.clone(), greedy(12)))
            .unwrap();
    }
    let mut outcomes = BTreeMap::new();
    for step in 0..3 {
        record(&mut outcomes, engine.step().unwrap(), step);
    }
    assert_eq!(engine.running(), 3);
    engine.cancel(1);
    let events = engine.step().unwrap();
    assert!(events.iter().any(|e| matches!(
        e,
        EngineEvent::Done {
            id: 1,
            reason: StopReason::Cancelled,
            ..
        }
    )));
    record(&mut outcomes, events, 3);
    assert!(engine.running() <= 2);
    let mut step = 4;
    while engine.pending() > 0 {
        record(&mut outcomes, engine.step().unwrap(), step);
        step += 1;
    }
    for id in [0u64, 2] {
        assert_eq!(outcomes[&id].ids, want[id as usize].0, "request {id}");
    }
    assert!(outcomes[&1].ids.len() < want[1].0.len());
    // Cancelling a waiting request ends it before it starts.
    engine
        .submit(9, EngineRequest::new(inputs[0].clone(), greedy(4)))
        .unwrap();
    engine.cancel(9);
    assert_eq!(engine.pending(), 1);
    let events = engine.step().unwrap();
    assert!(matches!(
        events[..],
        [EngineEvent::Done {
            id: 9,
            reason: StopReason::Cancelled,
            completion_tokens: 0,
            ..
        }]
    ));
    assert_eq!(engine.pending(), 0);
}

#[test]
fn a_long_prompt_is_prefilled_over_several_steps_while_another_row_decodes() {
    let mut checked = 0;
    for dir in fixture_models().iter().filter(|d| {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        !name.contains("bit")
    }) {
        let mut model = NativeModel::load(dir).unwrap();
        let inputs = inputs(dir);
        let long = inputs.last().unwrap().clone();
        let want_long = alone(&mut model, &long, &greedy(4));
        // A short input that runs to its budget (random models may end early).
        let Some((short, want_short)) = inputs[1..5].iter().find_map(|i| {
            let want = alone(&mut model, i, &greedy(30));
            (want.0.len() == 30).then(|| (i.clone(), want))
        }) else {
            continue;
        };
        let mut engine = model
            .engine(
                &EngineOptions::default()
                    .prefill_step_size(8)
                    .prompt_cache_size(0),
            )
            .unwrap();
        let schedule = vec![
            (0, 0, EngineRequest::new(short.clone(), greedy(30))),
            (2, 1, EngineRequest::new(long.clone(), greedy(4))),
        ];
        let out = run(engine.as_mut(), schedule);
        assert_eq!(out[&1].ids, want_long.0, "{}", dir.display());
        assert_eq!(out[&0].ids, want_short.0, "{}", dir.display());
        let prompt = out[&1].started.unwrap().0;
        assert!(prompt > 16, "the long prompt has {prompt} tokens");
        // The long prompt took several steps (8 tokens a step), and the
        // short row produced a token every step meanwhile (its text may be
        // released a few steps late while a character is incomplete).
        let first_long = out[&1].steps[0];
        let first_short = out[&0].steps[0];
        assert!(
            first_long - first_short >= prompt / 8 - 1,
            "{}: {first_short} {first_long}",
            dir.display()
        );
        let during = out[&0].steps.iter().filter(|&&x| x < first_long).count();
        assert!(
            during + 3 >= first_long - first_short,
            "{}: {:?} (long prompt's first token at step {first_long})",
            dir.display(),
            out[&0].steps
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} fixtures had a short input that runs long"
    );
}

#[test]
fn a_seeded_request_gives_the_same_tokens_alone_and_in_a_batch() {
    for dir in fixture_models().iter() {
        let mut model = NativeModel::load(dir).unwrap();
        let inputs = inputs(dir);
        let sampled = GenerateOptions::default()
            .max_tokens(8)
            .temperature(1.0)
            .top_k(50)
            .seed(7);
        let mut engine = model.engine(&EngineOptions::default()).unwrap();
        let solo = run(
            engine.as_mut(),
            vec![(0, 0, EngineRequest::new(inputs[5].clone(), sampled.clone()))],
        );
        let mut schedule = vec![(1, 0, EngineRequest::new(inputs[5].clone(), sampled.clone()))];
        for id in 1..6u64 {
            let opts = if id % 2 == 0 {
                greedy(10)
            } else {
                GenerateOptions::default()
                    .max_tokens(10)
                    .temperature(0.8)
                    .seed(id)
            };
            schedule.push((
                id as usize % 3,
                id,
                EngineRequest::new(inputs[id as usize].clone(), opts),
            ));
        }
        let batched = run(engine.as_mut(), schedule);
        assert_eq!(batched[&0].ids, solo[&0].ids, "{}", dir.display());
        assert_eq!(solo[&0].ids.len(), 8);
    }
}

#[test]
fn logprobs_are_the_log_softmax_of_the_models_logits() {
    for dir in fixture_models()
        .iter()
        .filter(|d| !d.to_string_lossy().contains("bit"))
    {
        let mut model = NativeModel::load(dir).unwrap();
        let input = inputs(dir)[4].clone();
        let Input::Prompt(text) = &input else {
            unreachable!()
        };
        let prompt = model.tokenizer().encode_prompt(text).unwrap();
        let mut engine = model.engine(&EngineOptions::default()).unwrap();
        let schedule = vec![
            (
                0,
                0,
                EngineRequest::new(input.clone(), greedy(4)).logprobs(5),
            ),
            (
                0,
                1,
                EngineRequest::new(inputs(dir)[0].clone(), greedy(6)).logprobs(0),
            ),
        ];
        let out = run(engine.as_mut(), schedule);
        drop(engine);
        let o = &out[&0];
        assert_eq!(o.logprobs.len(), o.ids.len());
        assert_eq!(out[&1].logprobs.len(), out[&1].ids.len());
        assert!(out[&1].logprobs.iter().all(|l| l.top.is_empty()));
        // The model's own forward pass over prompt + generated tokens.
        let arch = model.architecture();
        let all: Vec<i32> = prompt.iter().chain(&o.ids).map(|&t| t as i32).collect();
        let n = all.len() as i32;
        let logits = arch
            .forward_uncached(&Array::from_slice(&all, &[1, n]).unwrap())
            .unwrap()
            .astype(Dtype::Float32)
            .unwrap();
        let lp = logits
            .subtract(&logits.logsumexp(&[-1], true).unwrap())
            .unwrap();
        let vocab = lp.dim(-1).unwrap() as usize;
        let lp = lp.to_vec::<f32>().unwrap();
        for (t, (id, l)) in o.ids.iter().zip(&o.logprobs).enumerate() {
            let at = prompt.len() - 1 + t;
            let row = &lp[at * vocab..(at + 1) * vocab];
            let want = row[*id as usize] as f64;
            assert!(
                (l.logprob - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{}: token {t}: {} vs {want}",
                dir.display(),
                l.logprob
            );
            assert_eq!(l.top.len(), 5);
            assert!(l.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
            // Greedy: the chosen token is the most likely one.
            assert_eq!(l.top[0].id, *id);
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            assert!((l.top[0].logprob - best).abs() < 1e-4 * (1.0 + best.abs()));
        }
    }
}

#[test]
fn a_shared_prefix_is_read_from_the_prefix_cache_with_the_same_output() {
    for dir in fixture_models() {
        let mut model = NativeModel::load(&dir).unwrap();
        let inputs = inputs(&dir);
        let first = inputs[5].clone();
        let second = inputs[6].clone(); // starts with the first
        let want = alone(&mut model, &second, &greedy(6));
        let mut engine = model
            .engine(&EngineOptions::default().prompt_cache_size(2))
            .unwrap();
        run(
            engine.as_mut(),
            vec![(0, 0, EngineRequest::new(first.clone(), greedy(6)))],
        );
        let out = run(
            engine.as_mut(),
            vec![(0, 1, EngineRequest::new(second.clone(), greedy(6)))],
        );
        let (_, cached) = out[&1].started.unwrap();
        assert!(cached > 0, "{}: no prefix reused", dir.display());
        assert_eq!(out[&1].done.unwrap().3, cached);
        assert_eq!(out[&1].ids, want.0, "{}", dir.display());
        assert_eq!(out[&1].text, want.1, "{}", dir.display());
        // The same prompt again: all but its last token come from the cache.
        let again = run(
            engine.as_mut(),
            vec![(0, 2, EngineRequest::new(second.clone(), greedy(6)))],
        );
        let (prompt, cached) = again[&2].started.unwrap();
        assert_eq!(cached, prompt - 1, "{}", dir.display());
        assert_eq!(again[&2].ids, want.0, "{}", dir.display());
    }
}

#[test]
fn the_prefix_cache_keeps_at_most_its_size_dropping_the_least_recently_used() {
    // A model that adds no BOS, so unrelated prompts share no token.
    let dir = common::fixtures().join("qwen3");
    let mut model = NativeModel::load(&dir).unwrap();
    let mut engine = mlx_metal::llm::engine::NativeEngine::new(
        &mut model,
        &EngineOptions::default().prompt_cache_size(2),
    )
    .unwrap();
    // Three unrelated prompts, one after the other: the first is dropped.
    let prompts = [
        "import os and sys",
        "Zebras cross roads",
        "42 is the answer",
    ];
    let [a, b, c] = prompts.map(|p| Input::Prompt(p.into()));
    let (a, b, c) = (&a, &b, &c);
    let cached = |engine: &mut dyn Engine, input: &Input| -> usize {
        let out = run(
            engine,
            vec![(0, 0, EngineRequest::new(input.clone(), greedy(2)))],
        );
        out[&0].started.unwrap().1
    };
    for input in [a, b, c] {
        assert_eq!(cached(&mut engine, input), 0);
        assert!(engine.cached_prefixes() <= 2);
    }
    assert_eq!(engine.cached_prefixes(), 2);
    assert!(cached(&mut engine, b) > 0, "b was kept");
    assert!(cached(&mut engine, c) > 0, "c was kept");
    assert_eq!(cached(&mut engine, a), 0, "a was dropped first");
    // a is back, b is now the least recently used.
    assert_eq!(engine.cached_prefixes(), 2);
    assert!(cached(&mut engine, c) > 0);
    assert_eq!(cached(&mut engine, b), 0, "b was dropped");
}

#[test]
fn an_unusable_adapter_is_refused_when_the_engine_is_made() {
    let dir = &fixture_models()[0];
    let mut model = NativeModel::load(dir).unwrap();
    let missing = ScratchDir::new("engine-no-adapter");
    let err = model
        .engine(&EngineOptions::default().adapter("gone", missing.path().join("nothing")))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("`gone`"), "{err}");
    // The model still serves.
    let input = inputs(dir)[3].clone();
    let want = alone(&mut model, &input, &greedy(3));
    let mut engine = model.engine(&EngineOptions::default()).unwrap();
    let out = run(
        engine.as_mut(),
        vec![(0, 0, EngineRequest::new(input, greedy(3)))],
    );
    assert_eq!(out[&0].ids, want.0);
}

#[test]
fn bad_submits_are_refused_with_typed_errors_and_the_engine_goes_on() {
    let dir = &fixture_models()[0];
    let mut model = NativeModel::load(dir).unwrap();
    let inputs = inputs(dir);
    let want = alone(&mut model, &inputs[3], &greedy(4));
    let mut engine = model.engine(&EngineOptions::default()).unwrap();
    engine
        .submit(1, EngineRequest::new(inputs[3].clone(), greedy(4)))
        .unwrap();
    let bad = |e: Error| -> String {
        match e {
            Error::InvalidArgument(m) => m,
            Error::ContextExceeded { .. } => e.to_string(),
            other => panic!("unexpected error {other:?}"),
        }
    };
    let m = bad(engine
        .submit(
            2,
            EngineRequest::new(inputs[3].clone(), greedy(4)).adapter("nope"),
        )
        .unwrap_err());
    assert!(m.contains("`nope`"), "{m}");
    let m = bad(engine
        .submit(3, EngineRequest::new(inputs[3].clone(), greedy(5000)))
        .unwrap_err());
    assert!(m.contains("5000") && m.contains("1024"), "{m}");
    let m = bad(engine
        .submit(
            4,
            EngineRequest::new(Input::Prompt(String::new()), greedy(4)),
        )
        .unwrap_err());
    assert!(m.contains("empty"), "{m}");
    let m = bad(engine
        .submit(5, EngineRequest::new(Input::Chat(Vec::new()), greedy(4)))
        .unwrap_err());
    assert!(m.contains("no messages"), "{m}");
    bad(engine
        .submit(
            6,
            EngineRequest::new(inputs[3].clone(), greedy(4).temperature(-1.0)),
        )
        .unwrap_err());
    let m = bad(engine
        .submit(
            7,
            EngineRequest::new(inputs[3].clone(), greedy(4)).logprobs(21),
        )
        .unwrap_err());
    assert!(m.contains("21"), "{m}");
    bad(engine
        .submit(1, EngineRequest::new(inputs[3].clone(), greedy(4)))
        .unwrap_err());
    assert_eq!(engine.pending(), 1);
    let mut outcomes = BTreeMap::new();
    let mut step = 0;
    while engine.pending() > 0 {
        record(&mut outcomes, engine.step().unwrap(), step);
        step += 1;
    }
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[&1].ids, want.0);
}

#[test]
fn non_finite_logits_fail_their_request_alone() {
    let dir = fixture_models()
        .into_iter()
        .find(|d| d.ends_with("llama"))
        .unwrap();
    let mut model = NativeModel::load(&dir).unwrap();
    let inputs = inputs(&dir);
    let (a, b) = (inputs[5].clone(), inputs[0].clone());
    let want = alone(&mut model, &a, &greedy(8));
    // Poison the embedding of a token only `b` reads (the output layer is
    // not tied to it): `b`'s row turns NaN, `a`'s is untouched.
    let ids = model.encode_inputs(&[a.clone(), b.clone()]).unwrap();
    let t = *ids[1]
        .iter()
        .find(|t| !ids[0].contains(t) && !want.0.contains(t))
        .expect("a token only the second input has");
    let arch = model.architecture_mut();
    let name = "model.embed_tokens.weight";
    let w = mlx_metal::nn::params::named(arch.module(), "").unwrap()[name].clone();
    let hidden = w.dim(1).unwrap() as usize;
    let mut data = w.to_vec::<f32>().unwrap();
    data[t as usize * hidden..(t as usize + 1) * hidden].fill(f32::NAN);
    let poisoned = Array::from_slice(&data, &w.shape()).unwrap();
    let update = BTreeMap::from([(name.to_string(), poisoned)]);
    mlx_metal::nn::params::update(arch.module(), "", &update).unwrap();
    let mut engine = model.engine(&EngineOptions::default()).unwrap();
    let out = run(
        engine.as_mut(),
        vec![
            // read together in one padded batch, and one joining later
            (0, 0, EngineRequest::new(a.clone(), greedy(8))),
            (0, 1, EngineRequest::new(b.clone(), greedy(8))),
            (1, 2, EngineRequest::new(b.clone(), greedy(8))),
            (1, 3, EngineRequest::new(a.clone(), greedy(8))),
        ],
    );
    for id in [1, 2] {
        let failed = out[&id]
            .failed
            .as_deref()
            .expect("the poisoned request fails");
        assert!(failed.contains("non-finite"), "{failed}");
        assert!(out[&id].done.is_none());
    }
    for id in [0, 3] {
        assert_eq!(out[&id].ids, want.0);
        assert!(out[&id].done.is_some());
    }
}

#[test]
fn a_repetition_penalty_applies_to_its_row_alone() {
    for dir in fixture_models().iter().step_by(3) {
        let mut model = NativeModel::load(dir).unwrap();
        let inputs = inputs(dir);
        let penalised = greedy(12).repetition_penalty(1.5);
        let want = alone(&mut model, &inputs[6], &penalised);
        let want_plain = alone(&mut model, &inputs[6], &greedy(12));
        let mut engine = model.engine(&EngineOptions::default()).unwrap();
        let out = run(
            engine.as_mut(),
            vec![
                (
                    0,
                    0,
                    EngineRequest::new(inputs[6].clone(), penalised.clone()),
                ),
                (0, 1, EngineRequest::new(inputs[6].clone(), greedy(12))),
                (1, 2, EngineRequest::new(inputs[2].clone(), greedy(12))),
            ],
        );
        assert_eq!(out[&0].ids, want.0, "{}", dir.display());
        assert_eq!(out[&1].ids, want_plain.0, "{}", dir.display());
    }
}

/// Writes a LoRA adapter for `fixture` in mlx_lm's layout to `dir`: random
/// `lora_a` and `lora_b` (seeded) on the linears `config` names.
fn write_adapter(
    fixture: &std::path::Path,
    config: &AdapterConfig,
    seed: u64,
    dir: &std::path::Path,
) {
    let mut model = NativeModel::load(fixture).unwrap();
    let trainable = finetune::attach(model.architecture_mut(), config).unwrap();
    let mut weights = trainable
        .parameters(model.architecture_mut().module())
        .unwrap();
    for (i, (name, value)) in weights.iter_mut().enumerate() {
        let k = random::key(seed * 1000 + i as u64).unwrap();
        let std = if name.ends_with("lora_b") { 0.1 } else { 0.2 };
        *value = random::normal(&value.shape(), Dtype::Float32, 0.0, std, Some(&k)).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    adapter::save_weights(&dir.join(adapter::WEIGHTS_FILE), &weights).unwrap();
    adapter::save_config(dir, &serde_json::to_value(config).unwrap()).unwrap();
}

#[test]
fn rows_with_different_adapters_share_a_batch_and_each_equals_its_adapter_alone() {
    let fixtures: Vec<_> = fixture_models()
        .into_iter()
        .filter(|d| d.ends_with("llama") || d.ends_with("qwen3-4bit") || d.ends_with("gemma3_text"))
        .collect();
    assert_eq!(fixtures.len(), 3);
    for dir in fixtures {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let scratch = ScratchDir::new(&format!("engine-adapters-{name}"));
        let (a_dir, b_dir) = (scratch.path().join("a"), scratch.path().join("b"));
        let everywhere = AdapterConfig::default();
        let some = AdapterConfig {
            num_layers: 1,
            lora_parameters: Some(LoraParameters {
                rank: 4,
                scale: 10.0,
                dropout: 0.0,
                keys: Some(vec!["self_attn.q_proj".into(), "self_attn.v_proj".into()]),
            }),
            ..AdapterConfig::default()
        };
        write_adapter(&dir, &everywhere, 1, &a_dir);
        write_adapter(&dir, &some, 2, &b_dir);
        let inputs = inputs(&dir);
        let picks = [0usize, 3, 5];
        // Each adapter alone, as `LoadOptions::adapter_path` loads it.
        let load = |adapter: Option<&std::path::Path>| {
            let mut opts = LoadOptions::default().backend(mlx_metal::backend_name());
            if let Some(a) = adapter {
                opts = opts.adapter_path(a);
            }
            inference::load_model_with(&dir, opts).unwrap()
        };
        let mut want: BTreeMap<(Option<&str>, usize), Answer> = BTreeMap::new();
        for (adapter, path) in [
            (None, None),
            (Some("a"), Some(a_dir.as_path())),
            (Some("b"), Some(b_dir.as_path())),
        ] {
            let mut model = load(path);
            for &i in &picks {
                want.insert((adapter, i), alone(model.as_mut(), &inputs[i], &greedy(6)));
            }
        }
        assert!(
            picks
                .iter()
                .any(|&i| want[&(None, i)] != want[&(Some("a"), i)]),
            "{name}: adapter a changes nothing"
        );
        assert!(
            picks
                .iter()
                .any(|&i| want[&(None, i)] != want[&(Some("b"), i)]),
            "{name}: adapter b changes nothing"
        );
        let mut model = NativeModel::load(&dir).unwrap();
        let mut engine = model
            .engine(
                &EngineOptions::default()
                    .adapter("a", &a_dir)
                    .adapter("b", &b_dir),
            )
            .unwrap();
        let mut schedule = Vec::new();
        let mut expected = BTreeMap::new();
        let mut id = 0u64;
        for (round, &i) in picks.iter().enumerate() {
            for adapter in [None, Some("a"), Some("b")] {
                let mut request = EngineRequest::new(inputs[i].clone(), greedy(6));
                if let Some(a) = adapter {
                    request = request.adapter(a);
                }
                schedule.push((round + id as usize % 2, id, request));
                expected.insert(id, want[&(adapter, i)].clone());
                id += 1;
            }
        }
        let out = run(engine.as_mut(), schedule);
        for (id, (ids, text)) in &expected {
            assert_eq!(&out[id].ids, ids, "{name}: request {id}");
            assert_eq!(&out[id].text, text, "{name}: request {id}");
        }
        drop(engine);
        // The model as loaded again once the engine is gone.
        assert_eq!(alone(&mut model, &inputs[3], &greedy(6)), want[&(None, 3)]);
        // A model loaded with an adapter is the base of the rows that name
        // none.
        let mut with_a = load(Some(a_dir.as_path()));
        let mut engine = with_a
            .engine(&EngineOptions::default().adapter("b", &b_dir))
            .unwrap();
        let schedule = picks
            .iter()
            .enumerate()
            .map(|(id, &i)| {
                (
                    0,
                    id as u64,
                    EngineRequest::new(inputs[i].clone(), greedy(6)),
                )
            })
            .collect();
        let out = run(engine.as_mut(), schedule);
        for (id, &i) in picks.iter().enumerate() {
            assert_eq!(
                out[&(id as u64)].ids,
                want[&(Some("a"), i)].0,
                "{name}: input {i}"
            );
        }
    }
}

#[test]
fn stop_strings_and_zero_max_tokens_end_requests_as_generate_does() {
    let mut checked = 0;
    for dir in fixture_models().iter().step_by(4) {
        let mut model = NativeModel::load(dir).unwrap();
        let inputs = inputs(dir);
        let free = alone(&mut model, &inputs[5], &greedy(12));
        let chars: Vec<char> = free.1.chars().collect();
        if chars.len() < 8 {
            continue;
        }
        let stop: String = chars[4..6].iter().collect();
        let stopped = greedy(12).stop(stop.clone());
        let want = alone(&mut model, &inputs[5], &stopped);
        let mut engine = model.engine(&EngineOptions::default()).unwrap();
        let out = run(
            engine.as_mut(),
            vec![
                (0, 0, EngineRequest::new(inputs[5].clone(), stopped.clone())),
                (0, 1, EngineRequest::new(inputs[2].clone(), greedy(0))),
                (1, 2, EngineRequest::new(inputs[5].clone(), greedy(12))),
            ],
        );
        assert_eq!(out[&0].text, want.1, "{}: stop {stop:?}", dir.display());
        assert!(!out[&0].text.contains(&stop));
        assert_eq!(out[&0].done.unwrap().0, StopReason::Stop);
        assert_eq!(out[&0].done.unwrap().2, out[&0].ids.len());
        assert_eq!(out[&2].text, free.1);
        let (reason, _, completion, _) = out[&1].done.unwrap();
        assert_eq!((reason, completion), (StopReason::MaxTokens, 0));
        assert!(out[&1].ids.is_empty() && out[&1].started.is_some());
        checked += 1;
    }
    assert!(checked >= 3, "{checked} fixtures checked");
}

#[test]
fn at_most_max_batch_rows_run_and_a_part_read_prompt_can_be_cancelled() {
    let dir = &fixture_models()[0];
    let mut model = NativeModel::load(dir).unwrap();
    let inputs = inputs(dir);
    let want: Vec<_> = inputs
        .iter()
        .map(|i| alone(&mut model, i, &greedy(4)))
        .collect();
    let mut engine = model
        .engine(
            &EngineOptions::default()
                .max_batch(3)
                .prefill_step_size(8)
                .prompt_cache_size(0),
        )
        .unwrap();
    for (id, input) in inputs.iter().enumerate() {
        engine
            .submit(id as u64, EngineRequest::new(input.clone(), greedy(4)))
            .unwrap();
    }
    let mut outcomes = BTreeMap::new();
    let mut step = 0;
    while engine.pending() > 0 {
        record(&mut outcomes, engine.step().unwrap(), step);
        assert!(
            engine.running() <= 3,
            "step {step}: {} rows",
            engine.running()
        );
        step += 1;
    }
    for (id, o) in &outcomes {
        assert_eq!(o.ids, want[*id as usize].0, "request {id}");
    }
    // The longest prompt, cancelled while it is being read.
    let long = inputs.last().unwrap().clone();
    let n = engine
        .submit(20, EngineRequest::new(long, greedy(4)))
        .unwrap();
    assert!(n > 16);
    let first = engine.step().unwrap();
    assert!(first.is_empty(), "{first:?}");
    engine.cancel(20);
    let events = engine.step().unwrap();
    assert!(
        matches!(
            events[..],
            [EngineEvent::Done {
                id: 20,
                reason: StopReason::Cancelled,
                prompt_tokens,
                completion_tokens: 0,
                ..
            }] if prompt_tokens == n
        ),
        "{events:?}"
    );
    assert_eq!((engine.pending(), engine.running()), (0, 0));
}

#[test]
fn prompts_continuing_stored_prefixes_of_different_lengths_are_read_together_correctly() {
    for dir in fixture_models() {
        let mut model = NativeModel::load(&dir).unwrap();
        let inputs = inputs(&dir);
        let want: Vec<_> = inputs
            .iter()
            .map(|i| alone(&mut model, i, &greedy(4)))
            .collect();
        let mut engine = model.engine(&EngineOptions::default()).unwrap();
        // Every prompt once, so that each is stored.
        let first: Vec<_> = (0..inputs.len() as u64)
            .map(|id| {
                (
                    0,
                    id,
                    EngineRequest::new(inputs[id as usize].clone(), greedy(4)),
                )
            })
            .collect();
        run(engine.as_mut(), first);
        // All again in one step: each continues its stored prefix (of its
        // own length) with one token left, so all are read in one forward
        // pass, their prefixes merged into one left-padded batch.
        let again: Vec<_> = (0..inputs.len() as u64)
            .map(|id| {
                (
                    0,
                    100 + id,
                    EngineRequest::new(inputs[id as usize].clone(), greedy(4)),
                )
            })
            .collect();
        let out = run(engine.as_mut(), again);
        for (id, o) in &out {
            let i = (*id - 100) as usize;
            let (prompt, cached) = o.started.unwrap();
            assert_eq!(cached, prompt - 1, "{}: input {i}", dir.display());
            assert_eq!(o.ids, want[i].0, "{}: input {i}", dir.display());
            assert_eq!(o.text, want[i].1, "{}: input {i}", dir.display());
        }
    }
}

#[test]
fn prefixes_stored_beside_long_rows_of_a_sliding_window_model_give_the_same_answers() {
    // A Gemma 3 fixture (sliding window of 8): a long prompt makes the
    // window layers drop old columns, the short rows' among them; rows
    // then join, finish and store their prefixes, and later requests
    // continue from those. Arrival steps from a fixed pseudo-random
    // sequence (the schedule that once stored a short row's history with
    // its dropped columns padded back as zeros).
    let dir = fixtures().join("gemma3_text-8bit");
    let mut model = NativeModel::load(&dir).unwrap();
    let base = "The quick brown fox jumps over the lazy dog. ";
    let mut inputs = Vec::new();
    for (i, n) in [1, 2, 3, 5, 8, 13, 21, 34].iter().enumerate() {
        let p = format!("{i}: {}", base.repeat(*n));
        inputs.push(Input::Prompt(p.clone()));
        inputs.push(Input::Chat(vec![Message::user(&p)]));
    }
    let want: Vec<_> = inputs
        .iter()
        .map(|i| alone(&mut model, i, &greedy(16)))
        .collect();
    let mut state = 12345u64;
    let mut next = move |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    // the 41st schedule of the sequence
    let mut steps: Vec<usize> = Vec::new();
    for _ in 0..41 {
        steps = (0..32).map(|_| next(25) as usize).collect();
    }
    let mut engine = model.engine(&EngineOptions::default()).unwrap();
    let schedule: Vec<_> = steps
        .iter()
        .enumerate()
        .map(|(id, &s)| {
            (
                s,
                id as u64,
                EngineRequest::new(inputs[id % 16].clone(), greedy(16)),
            )
        })
        .collect();
    let out = run(engine.as_mut(), schedule);
    let hits = out.values().filter(|o| o.started.unwrap().1 > 1).count();
    assert!(hits >= 8, "{hits} requests continued a stored prefix");
    for (id, o) in &out {
        let i = *id as usize % 16;
        assert_eq!(o.ids, want[i].0, "request {id} (input {i})");
    }
}
