//! Sampler statistics and streaming detokenisation.

mod common;

use std::collections::HashSet;

use common::fixtures;
use inference::GenerateOptions;
use mlx_metal::llm::generate::sampler_settings;
use mlx_metal::llm::sampler::Sampler;
use mlx_metal::llm::NativeModel;
use mlx_metal::Array;

const N: i32 = 4000;

/// `N` draws from logits with probabilities proportional to `probs`.
fn draws(opts: &GenerateOptions, probs: &[f32]) -> Vec<u32> {
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let v = logits.len() as i32;
    let batch = Array::from_slice(&logits, &[1, v])
        .unwrap()
        .broadcast_to(&[N, v])
        .unwrap();
    let mut sampler = Sampler::new(&sampler_settings(opts)).unwrap();
    sampler
        .sample(batch, None)
        .unwrap()
        .to_vec::<u32>()
        .unwrap()
}

fn set(xs: &[u32]) -> HashSet<u32> {
    xs.iter().copied().collect()
}

const PROBS: [f32; 6] = [0.05, 0.3, 0.1, 0.25, 0.2, 0.1];

#[test]
fn top_k_never_emits_tokens_outside_the_k_best() {
    let opts = GenerateOptions::default().temperature(1.0).top_k(3).seed(1);
    let seen = set(&draws(&opts, &PROBS));
    assert!(seen.is_subset(&set(&[1, 3, 4])), "{seen:?}");
    assert_eq!(seen.len(), 3, "all of the k best appear: {seen:?}");
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // sorted: 0.3 (1), 0.25 (3), 0.2 (4), ... -> 0.3 + 0.25 >= 0.5
    let opts = GenerateOptions::default()
        .temperature(1.0)
        .top_p(0.5)
        .seed(2);
    let seen = set(&draws(&opts, &PROBS));
    assert_eq!(seen, set(&[1, 3]), "{seen:?}");
}

#[test]
fn min_p_drops_tokens_below_the_scaled_top() {
    // keep p >= 0.5 * 0.3 = 0.15 -> tokens 1, 3, 4
    let opts = GenerateOptions::default()
        .temperature(1.0)
        .min_p(0.5)
        .seed(3);
    let seen = set(&draws(&opts, &PROBS));
    assert_eq!(seen, set(&[1, 3, 4]), "{seen:?}");
}

#[test]
fn temperature_one_follows_the_distribution() {
    let opts = GenerateOptions::default().temperature(1.0).seed(4);
    let d = draws(&opts, &PROBS);
    for (i, p) in PROBS.iter().enumerate() {
        let share = d.iter().filter(|&&t| t == i as u32).count() as f32 / N as f32;
        assert!((share - p).abs() < 0.03, "token {i}: {share} vs {p}");
    }
}

#[test]
fn greedy_is_argmax_and_seeds_reproduce() {
    let greedy = draws(&GenerateOptions::default(), &PROBS);
    assert!(greedy.iter().all(|&t| t == 1));
    let opts = GenerateOptions::default().temperature(0.8).seed(9);
    assert_eq!(draws(&opts, &PROBS), draws(&opts, &PROBS));
    assert_ne!(draws(&opts, &PROBS), draws(&opts.clone().seed(10), &PROBS));
}

#[test]
fn repetition_penalty_discourages_recent_tokens() {
    let logits = Array::from_slice(&[2.0f32, 1.9, -1.0], &[1, 3]).unwrap();
    let history = Array::from_vec(&[0i32, 2]).unwrap();
    let plain = Sampler::new(&sampler_settings(&GenerateOptions::default()))
        .unwrap()
        .sample(logits.clone(), Some(&history))
        .unwrap();
    assert_eq!(plain.to_vec::<u32>().unwrap(), vec![0]);
    let opts = GenerateOptions::default().repetition_penalty(1.2);
    let mut s = Sampler::new(&sampler_settings(&opts)).unwrap();
    assert!(s.wants_history());
    assert_eq!(
        s.sample(logits.clone(), Some(&history))
            .unwrap()
            .to_vec::<u32>()
            .unwrap(),
        vec![1]
    );
    // only the last `context` tokens count
    let opts = GenerateOptions::default()
        .repetition_penalty(1.2)
        .repetition_context_size(1);
    let mut s = Sampler::new(&sampler_settings(&opts)).unwrap();
    assert_eq!(
        s.sample(logits, Some(&history))
            .unwrap()
            .to_vec::<u32>()
            .unwrap(),
        vec![0]
    );
}

#[test]
fn streaming_detokenisation_of_multibyte_text_matches_the_full_decode() {
    for name in ["llama", "qwen3", "gemma3_text"] {
        let model = NativeModel::load(&fixtures().join(name)).unwrap();
        let tok = model.tokenizer();
        let text = "café — “naïve” 日本語 🙂🚀 façade ∑√π straße\n  indented";
        let ids = tok.encode(text, false).unwrap();
        assert!(ids.len() > 10);
        let mut detok = tok.detokenizer();
        let mut pieces = Vec::new();
        for &id in &ids {
            pieces.push(detok.add(id).unwrap());
        }
        pieces.push(detok.finish().unwrap());
        for p in &pieces {
            assert!(
                !p.contains('\u{FFFD}'),
                "{name}: half a character emitted in {pieces:?}"
            );
        }
        assert_eq!(pieces.concat(), tok.decode(&ids).unwrap(), "{name}");
        assert_eq!(pieces.concat(), text, "{name}");
        // some characters span several tokens, so some steps emit nothing
        assert!(pieces.iter().any(|p| p.is_empty()), "{name}: {pieces:?}");
    }
}

#[test]
fn a_trailing_partial_character_is_flushed_as_the_full_decode_does() {
    let model = NativeModel::load(&fixtures().join("qwen3")).unwrap();
    let tok = model.tokenizer();
    let ids = tok.encode("ab 🙂 日本語", false).unwrap();
    // a prefix of the ids that stops inside a character
    let n = (1..ids.len())
        .find(|&n| tok.decode(&ids[..n]).unwrap().ends_with('\u{FFFD}'))
        .expect("some prefix splits a character");
    let cut = &ids[..n];
    let mut detok = tok.detokenizer();
    let mut text: String = cut.iter().map(|&i| detok.add(i).unwrap()).collect();
    text.push_str(&detok.finish().unwrap());
    assert_eq!(text, tok.decode(cut).unwrap());
}

#[test]
fn tokens_that_decode_to_nothing_hold_nothing_back() {
    for name in ["llama", "qwen3", "gemma3_text"] {
        let model = NativeModel::load(&fixtures().join(name)).unwrap();
        let tok = model.tokenizer();
        // an id past the tokenizer's vocabulary decodes to nothing
        let skipped = 1_000_000;
        assert_eq!(tok.decode(&[skipped]).unwrap(), "", "{name}");
        let ids = tok.encode("The cat sat", false).unwrap();
        let mut detok = tok.detokenizer();
        let mut pieces = vec![detok.add(ids[0]).unwrap()];
        for &id in &[skipped, skipped] {
            assert_eq!(detok.add(id).unwrap(), "", "{name}");
            assert!(!detok.pending(), "{name}: a token with no text is held");
        }
        for &id in &ids[1..] {
            pieces.push(detok.add(id).unwrap());
        }
        pieces.push(detok.finish().unwrap());
        let mut all = vec![ids[0], skipped, skipped];
        all.extend(&ids[1..]);
        assert_eq!(
            pieces.concat(),
            tok.decode(&all).unwrap(),
            "{name}: {pieces:?}"
        );
        assert_eq!(pieces.concat(), "The cat sat", "{name}: {pieces:?}");
    }
}
