//! Active memory stays flat over many generations (alone in its binary:
//! other tests allocating meanwhile would move the numbers).

mod common;

use inference::{GenerateOptions, TextModel};
use mlx_metal::llm::NativeModel;

#[test]
fn active_memory_after_200_generations_is_within_2_percent_of_after_10() {
    let mut model = NativeModel::load(&common::fixtures().join("gemma3_text")).unwrap();
    let opts = GenerateOptions::default().max_tokens(24);
    let mut generate = |n: usize| {
        for i in 0..n {
            let mut count = 0;
            for token in model.generate(&format!("prompt number {i}"), &opts) {
                token.unwrap();
                count += 1;
            }
            assert!(count > 0);
        }
    };
    generate(10);
    let after_10 = mlx_metal::active_memory().unwrap() as f64;
    generate(190);
    let after_200 = mlx_metal::active_memory().unwrap() as f64;
    assert!(after_10 > 0.0);
    let drift = (after_200 - after_10).abs() / after_10;
    assert!(
        drift <= 0.02,
        "active memory {after_10} -> {after_200} ({:.2}%)",
        drift * 100.0
    );
}
