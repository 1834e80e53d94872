//! Tensor-parallel loads read each rank's share of the split layers from
//! the safetensors files themselves: the same numbers as reading the
//! whole layer and slicing it, dense and quantised, for output- and
//! input-split layers, on every rank.

mod common;

use mlx_metal::llm::config::Config;
use mlx_metal::llm::weights::Weights;
use mlx_metal::nn::shard::{shard_linear, Split};
use mlx_metal::nn::Linear;
use mlx_metal::{Array, Dtype};

/// Every tensor of a layer, as float32 values (packed weights as integers).
fn values(layer: &Linear) -> Vec<Vec<f32>> {
    let as_f32 = |a: &Array| a.astype(Dtype::Float32).unwrap().to_vec::<f32>().unwrap();
    match layer {
        Linear::Dense { weight, bias } => {
            let mut v = vec![as_f32(weight)];
            v.extend(bias.iter().map(as_f32));
            v
        }
        Linear::Quantized { weight, bias } => {
            let mut v = vec![
                as_f32(&weight.weight),
                as_f32(&weight.scales),
                as_f32(&weight.biases),
            ];
            v.extend(bias.iter().map(as_f32));
            v
        }
        _ => panic!("no adapters here"),
    }
}

#[test]
fn shares_read_from_the_files_equal_slices_of_the_whole_layer() {
    for fixture in ["qwen3", "qwen3-4bit", "qwen3-8bit", "qwen2"] {
        let dir = common::fixtures().join(fixture);
        let (config, _) = Config::load(&dir).unwrap();
        let raw = &config.raw;
        let int = |k: &str| raw[k].as_i64().unwrap() as i32;
        let hidden = int("hidden_size");
        let inter = int("intermediate_size");
        let heads = int("num_attention_heads");
        let head_dim = raw["head_dim"]
            .as_i64()
            .map_or(hidden / heads, |d| d as i32);
        let q_out = heads * head_dim;
        let kv_out = int("num_key_value_heads") * head_dim;
        let bias = fixture == "qwen2";
        let layers = [
            ("self_attn.q_proj", hidden, q_out, bias, Split::Outputs),
            ("self_attn.k_proj", hidden, kv_out, bias, Split::Outputs),
            ("self_attn.o_proj", q_out, hidden, false, Split::Inputs),
            ("mlp.up_proj", hidden, inter, false, Split::Outputs),
            ("mlp.down_proj", inter, hidden, false, Split::Inputs),
        ];
        for rank in 0..2 {
            let mut whole = Weights::load(&dir, &config, None).unwrap();
            let mut shares = Weights::load(&dir, &config, None).unwrap();
            shares.read_shares(rank, 2);
            for (name, inp, out, bias, split) in layers {
                let prefix = format!("model.layers.1.{name}");
                let full = whole.linear(&prefix, inp, out, bias).unwrap();
                let whole_size = match split {
                    Split::Outputs => out,
                    Split::Inputs => inp,
                };
                let sliced = shard_linear(&full, split, rank, 2, whole_size).unwrap();
                let read = shares.linear_share(&prefix, inp, out, bias, split).unwrap();
                assert_eq!(
                    read.dims().unwrap(),
                    sliced.dims().unwrap(),
                    "{fixture} {prefix}"
                );
                assert_eq!(
                    values(&read),
                    values(&sliced),
                    "{fixture} {prefix} rank {rank}"
                );
                // a share is kept as it is when the model is spread
                let kept = shard_linear(&read, split, rank, 2, whole_size).unwrap();
                assert_eq!(values(&kept), values(&read));
            }
        }
    }
}
