//! Peak memory of classification does not grow with the number of batches
//! (a binary of its own: it measures process-wide MLX memory).

use inference::{BatchOptions, ClassifyOptions, Input, TextModel};
use mlx_metal::llm::NativeModel;

#[test]
fn peak_memory_stays_that_of_one_batch() {
    let dir = test_support::fixtures().join("gemma3_text");
    let mut model = NativeModel::load(&dir).unwrap();
    let inputs: Vec<Input> = (0..256)
        .map(|i| Input::Prompt(format!("def f{i}(x): return x * {i} + len('abc')")))
        .collect();
    let opts = ClassifyOptions::default().batch(BatchOptions::default().batch_size(8));
    // Warm up (first allocations, compiled kernels).
    model.classify(&inputs[..8], &opts).unwrap();
    model.classify(&inputs[..8], &opts).unwrap();
    let one_batch = model.metrics().peak_memory_bytes;
    let before = mlx_metal::active_memory().unwrap();
    model.classify(&inputs, &opts).unwrap();
    let many = model.metrics().peak_memory_bytes;
    let after = mlx_metal::active_memory().unwrap();
    assert!(one_batch > 0);
    assert!(
        many as f64 <= one_batch as f64 * 1.5,
        "32 batches peaked at {many} bytes, one batch at {one_batch}"
    );
    assert!(
        after <= before + (1 << 20),
        "active memory grew from {before} to {after} bytes"
    );
}
