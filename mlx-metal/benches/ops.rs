//! Operation benchmarks: the cost of one MLX op (or a small graph) through
//! this crate, each case built and evaluated (`eval`) inside the timed loop.
//!
//! Cases are named `op/dtype/shape` and `xtask/python/bench_ops.py` times the
//! same cases, under the same names, through Python's `mlx.core`;
//! `cargo xtask bench ops` runs both and prints them side by side. Shapes:
//! matmul and linear `MxKxN`; norms `BxLxD`; RoPE `BxHxLxD`; attention
//! `q{B}x{H}x{L}x{D}_kv{B}x{Hkv}x{S}x{D}`; embedding `ids{B}x{L}_table{V}x{D}`.
//!
//! `chain100_build` alone is not evaluated: it builds the 100-op graph of
//! `chain100` and drops it: the cost of building ops (this crate and MLX).
//!
//! Defaults suit a slow CPU: 10 samples, 0.5 s warm-up, 1.5 s measurement,
//! flat sampling (every sample the same number of iterations, as the Python
//! side does); criterion's command-line options override them. Tables are
//! reported from the median (`target/criterion/**/new/estimates.json`).
//!
//! Every case's inputs are made (and evaluated) the first time criterion
//! calls it, then the case runs once untimed (MLX's CUDA build compiles
//! kernels on first use), so a filtered-out case costs nothing.
//!
//! ```text
//! cargo bench -p mlx-metal --bench ops -- --list
//! cargo bench -p mlx-metal --bench ops -- 'softmax|sampler'
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode};
use inference::GenerateOptions;
use mlx_metal::fast::{self, AttentionMask};
use mlx_metal::llm::config::Config;
use mlx_metal::llm::generate::sampler_settings;
use mlx_metal::llm::sampler::Sampler;
use mlx_metal::llm::weights::Weights;
use mlx_metal::nn::activation::Activation;
use mlx_metal::nn::cache::{KvCache, Mask};
use mlx_metal::nn::{Attention, AttentionConfig, Heads, Mlp, QkNorm, QkvLayout};
use mlx_metal::nn::{Embedding, Linear, RmsNorm, Rope};
use mlx_metal::{random, Array, Device, Dtype, Result};

/// Width of the single-op cases' model (a Llama-style 2048-wide model with
/// 32 query heads and 4 KV heads of 64, vocabulary 32000).
const HIDDEN: i32 = 2048;
const HEADS: i32 = 32;
const KV_HEADS: i32 = 4;
const HEAD_DIM: i32 = 64;
const VOCAB: i32 = 32000;
/// Prompt length of the prefill cases, and context length of the decode cases.
const SEQ: i32 = 512;
/// Elements of the element-wise and sum cases.
const ELEMENTS: i32 = 1 << 20;

/// Stops the run with a message naming the case (no panic).
fn fail(id: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("error: ops bench case {id}: {e}");
    std::process::exit(1)
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::Float32 => "f32",
        Dtype::Bfloat16 => "bf16",
        Dtype::Float16 => "f16",
        _ => "other",
    }
}

/// Standard-normal values of `shape` and `dtype`, evaluated.
fn normal(shape: &[i32], dtype: Dtype) -> Result<Array> {
    let a = random::normal(shape, dtype, 0.0, 1.0, None)?;
    a.eval()?;
    Ok(a)
}

/// Registers the case `op/dtype/shape`: `setup` makes the inputs and returns
/// the routine that builds the case's graph; the timed loop calls the
/// routine and evaluates what it returns.
fn case<S, F>(c: &mut Criterion, op: &str, dtype: Dtype, shape: &str, setup: S)
where
    S: FnOnce() -> Result<F>,
    F: FnMut() -> Result<Array>,
{
    let id = format!("{op}/{}/{shape}", dtype_name(dtype));
    let mut setup = Some(setup);
    let mut routine: Option<F> = None;
    let mut group = c.benchmark_group(op);
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::new(dtype_name(dtype), shape), |b| {
        let r = routine.get_or_insert_with(|| {
            let make = setup.take().expect("setup runs once");
            let mut r = make().unwrap_or_else(|e| fail(&id, e));
            r().and_then(|a| a.eval()).unwrap_or_else(|e| fail(&id, e));
            r
        });
        b.iter(|| {
            let out = r().unwrap_or_else(|e| fail(&id, e));
            out.eval().unwrap_or_else(|e| fail(&id, e));
            black_box(out)
        })
    });
    group.finish();
}

fn matmul(c: &mut Criterion) {
    let shapes = [
        (128, 128, 128),
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (4096, 4096, 4096),
        (1, HIDDEN, VOCAB),
    ];
    for dtype in [Dtype::Float32, Dtype::Bfloat16] {
        for (m, k, n) in shapes {
            case(c, "matmul", dtype, &format!("{m}x{k}x{n}"), || {
                let (a, b) = (normal(&[m, k], dtype)?, normal(&[k, n], dtype)?);
                Ok(move || a.matmul(&b))
            });
        }
    }
}

fn softmax(c: &mut Criterion) {
    for vocab in [1024, 32768, 131072] {
        case(c, "softmax", Dtype::Float32, &format!("1x{vocab}"), || {
            let x = normal(&[1, vocab], Dtype::Float32)?;
            Ok(move || x.softmax(&[-1], false))
        });
    }
}

fn elementwise(c: &mut Criterion) {
    let shape = ELEMENTS.to_string();
    let f32 = Dtype::Float32;
    case(c, "add", f32, &shape, || {
        let (a, b) = (normal(&[ELEMENTS], f32)?, normal(&[ELEMENTS], f32)?);
        Ok(move || a.add(&b))
    });
    case(c, "mul", f32, &shape, || {
        let (a, b) = (normal(&[ELEMENTS], f32)?, normal(&[ELEMENTS], f32)?);
        Ok(move || a.multiply(&b))
    });
    case(c, "silu", f32, &shape, || {
        let a = normal(&[ELEMENTS], f32)?;
        Ok(move || a.silu())
    });
}

fn norms(c: &mut Criterion) {
    for op in ["rms_norm", "layer_norm"] {
        for dtype in [Dtype::Float32, Dtype::Bfloat16] {
            for l in [1, SEQ] {
                case(c, op, dtype, &format!("1x{l}x{HIDDEN}"), || {
                    let x = normal(&[1, l, HIDDEN], dtype)?;
                    let (w, b) = (normal(&[HIDDEN], dtype)?, normal(&[HIDDEN], dtype)?);
                    Ok(move || {
                        if op == "rms_norm" {
                            fast::rms_norm(&x, Some(&w), 1e-5)
                        } else {
                            fast::layer_norm(&x, Some(&w), Some(&b), 1e-5)
                        }
                    })
                });
            }
        }
    }
}

fn attention(c: &mut Criterion) {
    let scale = (HEAD_DIM as f32).powf(-0.5);
    for dtype in [Dtype::Float32, Dtype::Bfloat16] {
        // Decode: one new position after SEQ; prefill: SEQ positions from 0.
        for (l, offset) in [(1, SEQ), (SEQ, 0)] {
            case(
                c,
                "rope",
                dtype,
                &format!("1x{HEADS}x{l}x{HEAD_DIM}"),
                || {
                    let x = normal(&[1, HEADS, l, HEAD_DIM], dtype)?;
                    Ok(move || fast::rope(&x, HEAD_DIM, false, Some(10000.0), 1.0, offset, None))
                },
            );
        }
    }
    for dtype in [Dtype::Float32, Dtype::Bfloat16] {
        for l in [1, SEQ] {
            let causal = l > 1;
            let shape = format!(
                "q1x{HEADS}x{l}x{HEAD_DIM}_kv1x{KV_HEADS}x{SEQ}x{HEAD_DIM}{}",
                if causal { "_causal" } else { "" }
            );
            case(c, "sdpa", dtype, &shape, || {
                let q = normal(&[1, HEADS, l, HEAD_DIM], dtype)?;
                let k = normal(&[1, KV_HEADS, SEQ, HEAD_DIM], dtype)?;
                let v = normal(&[1, KV_HEADS, SEQ, HEAD_DIM], dtype)?;
                Ok(move || {
                    let mask = if causal {
                        AttentionMask::Causal
                    } else {
                        AttentionMask::None
                    };
                    fast::scaled_dot_product_attention(&q, &k, &v, scale, mask)
                })
            });
        }
    }
}

fn layers(c: &mut Criterion) {
    let f32 = Dtype::Float32;
    case(c, "linear", f32, &format!("1x{HIDDEN}x{HIDDEN}"), || {
        let x = normal(&[1, 1, HIDDEN], f32)?;
        let layer = Linear::Dense {
            weight: normal(&[HIDDEN, HIDDEN], f32)?,
            bias: None,
        };
        Ok(move || layer.forward(&x))
    });
    case(
        c,
        "embedding",
        f32,
        &format!("ids1x128_table{VOCAB}x{HIDDEN}"),
        || {
            let table = Embedding::Dense(normal(&[VOCAB, HIDDEN], f32)?);
            let ids =
                random::uniform(0.0, VOCAB as f32, &[1, 128], f32, None)?.astype(Dtype::Int32)?;
            ids.eval()?;
            Ok(move || table.forward(&ids))
        },
    );
}

fn reductions(c: &mut Criterion) {
    let f32 = Dtype::Float32;
    case(c, "sum", f32, &ELEMENTS.to_string(), || {
        let x = normal(&[ELEMENTS], f32)?;
        Ok(move || x.sum(&[], false))
    });
    case(c, "argmax", f32, &format!("1x{VOCAB}"), || {
        let x = normal(&[1, VOCAB], f32)?;
        Ok(move || x.argmax(-1, false))
    });
}

fn sampler(c: &mut Criterion) {
    let chains = [
        ("sampler_greedy", GenerateOptions::default()),
        (
            "sampler_top_k",
            GenerateOptions::default().temperature(1.0).top_k(50),
        ),
        (
            "sampler_top_p",
            GenerateOptions::default().temperature(1.0).top_p(0.9),
        ),
        (
            "sampler_combined",
            GenerateOptions::default()
                .temperature(0.7)
                .top_p(0.9)
                .min_p(0.05)
                .top_k(50),
        ),
    ];
    for (op, opts) in chains {
        case(c, op, Dtype::Float32, &format!("1x{VOCAB}"), move || {
            let logits = normal(&[1, VOCAB], Dtype::Float32)?.mul_scalar(3.0)?;
            logits.eval()?;
            let mut sampler = Sampler::new(&sampler_settings(&opts))?;
            Ok(move || sampler.sample(logits.clone(), None))
        });
    }
}

/// The 100-op chain's graph: `((x + a) * m + a) * m ...` on 16 numbers.
fn chain_graph(x: &Array, a: &Array, m: &Array) -> Result<Array> {
    let mut y = x.clone();
    for i in 0..100 {
        y = if i % 2 == 0 {
            y.add(a)?
        } else {
            y.multiply(m)?
        };
    }
    Ok(y)
}

/// Overhead: 100 element-wise ops on 16 numbers, built and evaluated; and
/// the same graph built and dropped unevaluated (the layer's own cost).
fn chain(c: &mut Criterion) {
    let inputs = || -> Result<(Array, Array, Array)> {
        let x = normal(&[16], Dtype::Float32)?;
        let a = Array::full(&[16], 0.5, Dtype::Float32)?;
        let m = Array::full(&[16], 0.99, Dtype::Float32)?;
        mlx_metal::eval(&[&a, &m])?;
        Ok((x, a, m))
    };
    case(c, "chain100", Dtype::Float32, "16", || {
        let (x, a, m) = inputs()?;
        Ok(move || chain_graph(&x, &a, &m))
    });
    let id = "chain100_build/f32/16";
    let mut state = None;
    let mut group = c.benchmark_group("chain100_build");
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::new("f32", "16"), |b| {
        let (x, a, m) = state.get_or_insert_with(|| inputs().unwrap_or_else(|e| fail(id, e)));
        b.iter(|| black_box(chain_graph(x, a, m).unwrap_or_else(|e| fail(id, e))))
    });
    group.finish();
}

/// The bench model's layer size (Qwen3-0.6B: hidden 1024, 16/8 heads of
/// 128, MLP 3072, q/k norms, RoPE base 1e6), bf16 random weights.
const LAYER_HIDDEN: i32 = 1024;
const LAYER_HEADS: i32 = 16;
const LAYER_KV_HEADS: i32 = 8;
const LAYER_HEAD_DIM: i32 = 128;
const LAYER_MLP: i32 = 3072;
/// Positions already in the KV cache when the decoded token arrives.
const LAYER_CONTEXT: i32 = 300;

/// One pre-norm decoder block made of the crate's layers.
struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
}

impl Block {
    fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
        let h = x.add(
            &self
                .attn
                .forward(&self.input_norm.forward(x)?, &Mask::None, cache)?,
        )?;
        h.add(&self.mlp.forward(&self.post_attn_norm.forward(&h)?)?)
    }
}

/// Writes one block's random bf16 weights to a temporary directory and loads
/// them through [`Weights`], as a model directory is loaded.
fn random_block() -> Result<Block> {
    let (h, q, kv, d) = (
        LAYER_HIDDEN,
        LAYER_HEADS * LAYER_HEAD_DIM,
        LAYER_KV_HEADS * LAYER_HEAD_DIM,
        LAYER_HEAD_DIM,
    );
    let bf16 = Dtype::Bfloat16;
    let dense = |out: i32, inp: i32| -> Result<Array> {
        random::normal(&[out, inp], bf16, 0.0, 0.02, None)
    };
    let mut tensors = HashMap::new();
    for (name, array) in [
        ("self_attn.q_proj.weight", dense(q, h)?),
        ("self_attn.k_proj.weight", dense(kv, h)?),
        ("self_attn.v_proj.weight", dense(kv, h)?),
        ("self_attn.o_proj.weight", dense(h, q)?),
        ("self_attn.q_norm.weight", Array::ones(&[d], bf16)?),
        ("self_attn.k_norm.weight", Array::ones(&[d], bf16)?),
        ("mlp.gate_proj.weight", dense(LAYER_MLP, h)?),
        ("mlp.up_proj.weight", dense(LAYER_MLP, h)?),
        ("mlp.down_proj.weight", dense(h, LAYER_MLP)?),
        ("input_layernorm.weight", Array::ones(&[h], bf16)?),
        ("post_attention_layernorm.weight", Array::ones(&[h], bf16)?),
    ] {
        tensors.insert(format!("layer.{name}"), array);
    }
    let source = std::path::Path::new("bench-layer");
    let config = Config::from_value(serde_json::json!({"model_type": "qwen3"}), source)?;
    let mut w = Weights::from_tensors(source, tensors, &config)?;
    let eps = 1e-6;
    let spec = AttentionConfig {
        heads: Heads {
            hidden: h,
            heads: LAYER_HEADS,
            kv_heads: LAYER_KV_HEADS,
            head_dim: d,
        },
        layout: QkvLayout::Separate,
        qkv_bias: false,
        o_bias: false,
        qk_norm: QkNorm::Plain,
        eps,
        rope: Rope::new(d, 1_000_000.0, false, 1.0),
        scale: (d as f32).powf(-0.5),
        softcap: None,
    };
    let block = Block {
        attn: Attention::load(&mut w, "layer.self_attn", &spec)?,
        mlp: Mlp::load(&mut w, "layer.mlp", h, LAYER_MLP, false, Activation::Silu)?,
        input_norm: w.rms_norm("layer.input_layernorm", h, eps)?,
        post_attn_norm: w.rms_norm("layer.post_attention_layernorm", h, eps)?,
    };
    // Run once: first allocations, and kernel compilation on CUDA.
    block
        .forward(&normal(&[1, 1, h], bf16)?, &mut context_cache()?)?
        .eval()?;
    Ok(block)
}

/// A KV cache holding `LAYER_CONTEXT` positions, evaluated.
fn context_cache() -> Result<KvCache> {
    let shape = [1, LAYER_KV_HEADS, LAYER_CONTEXT, LAYER_HEAD_DIM];
    let (k, v) = (
        normal(&shape, Dtype::Bfloat16)?,
        normal(&shape, Dtype::Bfloat16)?,
    );
    let mut cache = KvCache::standard();
    cache.update_and_fetch(&k, &v)?;
    mlx_metal::eval(&cache.state())?;
    Ok(cache)
}

/// Overhead: one decoder block's graph at decode shape (B=1, one token,
/// `LAYER_CONTEXT` cached positions); each iteration gets a fresh cache
/// (made outside the timed part) so the context length stays fixed.
fn decoder_layer(c: &mut Criterion) {
    let shape = format!("1x1x{LAYER_HIDDEN}_ctx{LAYER_CONTEXT}");
    let id = format!("decoder_layer/bf16/{shape}");
    let mut state: Option<(Block, Array)> = None;
    let mut group = c.benchmark_group("decoder_layer");
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::new("bf16", &shape), |b| {
        let (block, x) = state.get_or_insert_with(|| {
            let made = random_block()
                .and_then(|block| Ok((block, normal(&[1, 1, LAYER_HIDDEN], Dtype::Bfloat16)?)));
            made.unwrap_or_else(|e| fail(&id, e))
        });
        b.iter_batched(
            || context_cache().unwrap_or_else(|e| fail(&id, e)),
            |mut cache| {
                let out = block
                    .forward(x, &mut cache)
                    .unwrap_or_else(|e| fail(&id, e));
                out.eval().unwrap_or_else(|e| fail(&id, e));
                black_box((out, cache))
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .nresamples(10_000)
        .configure_from_args();
    if std::env::args().any(|a| a == "--bench") {
        match Device::default_device() {
            Ok(d) => eprintln!(
                "ops bench: MLX {} on {d}, BLAS: {}",
                mlx_metal::mlx_version(),
                mlx_metal::blas_info()
            ),
            Err(e) => fail("(device)", e),
        }
    }
    if let Err(e) = random::seed(0) {
        fail("(seed)", e);
    }
    matmul(&mut c);
    softmax(&mut c);
    elementwise(&mut c);
    norms(&mut c);
    attention(&mut c);
    layers(&mut c);
    reductions(&mut c);
    sampler(&mut c);
    chain(&mut c);
    decoder_layer(&mut c);
    c.final_summary();
}
