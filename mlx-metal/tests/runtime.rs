//! Devices, random numbers and the backend registration.

mod common;

use common::floats;
use mlx_metal::{random, Array, Device, DeviceType, Dtype, Stream};

#[test]
fn cpu_is_available_and_metal_only_on_apple_silicon() {
    assert!(Device::cpu().is_available());
    assert_eq!(Device::cpu().kind().unwrap(), DeviceType::Cpu);
    if inference::native_backend_name() != "metal" {
        assert!(!mlx_metal::metal_available());
    }
    let s = Stream::default_for(&Device::cpu()).unwrap();
    s.synchronize().unwrap();
    assert_eq!(mlx_metal::mlx_version(), "0.32.2");
}

#[test]
fn gpu_answer_matches_the_device_query() {
    assert_eq!(mlx_metal::gpu_available(), Device::gpu().is_available());
}

#[test]
fn backend_registers_under_the_platform_name() {
    assert_eq!(mlx_metal::backend_name(), inference::native_backend_name());
    let all = inference::backends();
    let b = all
        .iter()
        .find(|b| b.name() == inference::native_backend_name())
        .expect("registered");
    let status = b.status();
    assert!(status.available);
    assert_eq!(status.version.as_deref(), Some("0.32.2"));
    assert!(status.device.is_some());
}

#[test]
fn keyed_random_numbers_are_reproducible() {
    let k = random::key(7).unwrap();
    let a = floats(&random::normal(&[100], Dtype::Float32, 0.0, 1.0, Some(&k)).unwrap());
    let b = floats(&random::normal(&[100], Dtype::Float32, 0.0, 1.0, Some(&k)).unwrap());
    assert_eq!(a, b);
    let (k1, k2) = random::split(&k).unwrap();
    let c = floats(&random::normal(&[100], Dtype::Float32, 0.0, 1.0, Some(&k1)).unwrap());
    let d = floats(&random::normal(&[100], Dtype::Float32, 0.0, 1.0, Some(&k2)).unwrap());
    assert_ne!(a, c);
    assert_ne!(c, d);
}

#[test]
fn distributions_have_the_right_shape_and_range() {
    let k = random::key(3).unwrap();
    let u = floats(&random::uniform(2.0, 3.0, &[10_000], Dtype::Float32, Some(&k)).unwrap());
    assert!(u.iter().all(|&x| (2.0..3.0).contains(&x)));
    let mean: f32 = u.iter().sum::<f32>() / u.len() as f32;
    assert!((mean - 2.5).abs() < 0.02, "uniform mean {mean}");
    let n = floats(&random::normal(&[10_000], Dtype::Float32, 1.0, 2.0, Some(&k)).unwrap());
    let mean: f32 = n.iter().sum::<f32>() / n.len() as f32;
    let var: f32 = n.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n.len() as f32;
    assert!(
        (mean - 1.0).abs() < 0.1 && (var.sqrt() - 2.0).abs() < 0.1,
        "normal mean {mean} std {}",
        var.sqrt()
    );
}

#[test]
fn categorical_never_picks_masked_tokens() {
    let logits = Array::from_slice(
        &[0.0f32, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY],
        &[1, 4],
    )
    .unwrap()
    .broadcast_to(&[2000, 4])
    .unwrap();
    let k = random::key(11).unwrap();
    let picks = random::categorical(&logits, -1, Some(&k))
        .unwrap()
        .to_vec::<u32>()
        .unwrap();
    assert!(
        picks.iter().all(|&p| p == 0 || p == 2),
        "masked index sampled"
    );
    let share = picks.iter().filter(|&&p| p == 2).count() as f32 / picks.len() as f32;
    let expected = 1f32.exp() / (1.0 + 1f32.exp());
    assert!(
        (share - expected).abs() < 0.04,
        "share {share} vs {expected}"
    );
    random::seed(5).unwrap();
    let unkeyed = random::categorical(&logits, -1, None).unwrap();
    assert_eq!(unkeyed.shape(), vec![2000]);
}
