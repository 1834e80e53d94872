//! Memory accounting. One test in its own binary: other threads allocating
//! at the same time would move the numbers.

use mlx_metal::{
    active_memory, cache_memory, clear_cache, peak_memory, reset_peak_memory, Array, Dtype,
};

#[test]
fn memory_returns_to_baseline_and_limits_apply() {
    let warm = Array::ones(&[16], Dtype::Float32).unwrap();
    warm.eval().unwrap();
    drop(warm);
    let baseline = active_memory().unwrap();
    {
        let arrays: Vec<Array> = (0..1000)
            .map(|i| {
                let a = Array::full(&[256], i as f32, Dtype::Float32).unwrap();
                a.eval().unwrap();
                a
            })
            .collect();
        let held = active_memory().unwrap();
        assert_eq!(arrays.len(), 1000);
        assert!(
            held >= baseline + 1000 * 1024,
            "1,000 arrays of 1 KiB must show: baseline {baseline}, held {held}"
        );
    }
    assert_eq!(active_memory().unwrap(), baseline, "every array was freed");

    reset_peak_memory().unwrap();
    let big = Array::zeros(&[1 << 20], Dtype::Float32).unwrap();
    big.eval().unwrap();
    assert!(peak_memory().unwrap() >= 4 << 20);
    drop(big);
    clear_cache().unwrap();
    assert_eq!(cache_memory().unwrap(), 0);

    let previous = mlx_metal::set_cache_limit(1 << 20).unwrap();
    assert_eq!(mlx_metal::set_cache_limit(previous).unwrap(), 1 << 20);
    let previous = mlx_metal::set_memory_limit(1 << 30).unwrap();
    assert_eq!(mlx_metal::memory_limit().unwrap(), 1 << 30);
    mlx_metal::set_memory_limit(previous).unwrap();
}
