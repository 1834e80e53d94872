//! MLX's distributed layer through the safe wrapper, on the CPU with the
//! `ring` backend over loopback: this test binary starts copies of itself
//! as the ranks (`MLX_RANK`, `MLX_HOSTFILE`, as `mlx.launch` sets them).

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;

use inference::{ComputeDtype, GenerateOptions, TextModel};
use mlx_metal::distributed::{self, Group};
use mlx_metal::llm::NativeModel;
use mlx_metal::nn::ParallelKind;
use mlx_metal::{Array, Dtype};
use test_support::{ScratchDir, ScratchFile};

/// Set in the ranks' environment: which role to play.
const ROLE: &str = "MLX_INFER_TEST_DIST_ROLE";

/// A hostfile for `n` ranks on free loopback ports, removed when the
/// returned guard drops.
fn hostfile(tag: &str, n: usize) -> ScratchFile {
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let hosts: Vec<Vec<String>> = ports
        .iter()
        .map(|p| vec![format!("127.0.0.1:{p}")])
        .collect();
    ScratchFile::with_contents(
        &format!("dist-{tag}.json"),
        serde_json::to_string(&hosts).unwrap(),
    )
}

/// Starts `n` ranks running `test` in role `role`; returns each one's
/// exit status and output, failing the test if any takes over a minute.
fn run_ranks(test: &str, role: &str, n: usize) -> Vec<(Option<i32>, String)> {
    run_ranks_with(test, role, n, &[])
}

/// [`run_ranks`] with extra environment variables.
fn run_ranks_with(
    test: &str,
    role: &str,
    n: usize,
    env: &[(&str, &str)],
) -> Vec<(Option<i32>, String)> {
    // one run at a time: runs of parallel tests could pick the same free
    // ports, and on a small machine they slow each other past the deadline
    static ONE_RUN: Mutex<()> = Mutex::new(());
    let _turn = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let hosts = hostfile(role, n);
    let children: Vec<Child> = (0..n)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE, role)
                .env("MLX_RANK", rank.to_string())
                .env("MLX_HOSTFILE", hosts.path())
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    for mut child in children {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("a rank of `{role}` did not finish within a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut bytes = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        out.push((status.code(), String::from_utf8_lossy(&bytes).into_owned()));
    }
    out
}

/// What a rank printed after `key=` (the test harness may print the
/// test's name before it on the same line).
fn reported<'a>(text: &'a str, key: &str) -> &'a str {
    let pat = format!("{key}=");
    text.lines()
        .find_map(|l| {
            l.match_indices(&pat)
                .find(|(i, _)| *i == 0 || l.as_bytes()[i - 1] == b' ')
                .map(|(i, _)| &l[i + pat.len()..])
        })
        .unwrap_or_else(|| panic!("no `{key}=` in:\n{text}"))
}

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

#[test]
fn ring_is_built_in_and_unknown_backends_are_refused() {
    if role().is_some() {
        return;
    }
    assert!(distributed::is_available(Some("ring")).unwrap());
    // A backend this MLX lacks (NCCL in the CPU build) is named as such.
    if !distributed::is_available(Some("nccl")).unwrap() {
        let err = Group::init(Some("nccl"), true).unwrap_err().to_string();
        assert!(
            err.contains("no `nccl` distributed backend") && err.contains("ring"),
            "{err}"
        );
    }
    let err = Group::init(Some("carrier-pigeon"), true).unwrap_err();
    assert!(err.to_string().contains("carrier-pigeon"), "{err}");
    // A process alone, not strict: a group of one.
    let alone = Group::init(None, false).unwrap();
    assert_eq!((alone.rank(), alone.size()), (0, 1));
}

#[test]
fn collectives_over_a_loopback_ring() {
    if role().as_deref() == Some("collectives") {
        let g = Group::init(Some("ring"), true).unwrap();
        let r = g.rank() as f32;
        let x = Array::from_vec(&[r + 1.0, 10.0 * (r + 1.0)]).unwrap();
        println!("size={}", g.size());
        println!("sum={:?}", g.all_sum(&x).unwrap().to_vec::<f32>().unwrap());
        println!("max={:?}", g.all_max(&x).unwrap().to_vec::<f32>().unwrap());
        let gathered = g.all_gather(&x.reshape(&[1, 2]).unwrap()).unwrap();
        println!("gather={:?}", gathered.to_vec::<f32>().unwrap());
        // Rank 0 sends to the last rank.
        let last = g.size() - 1;
        if g.rank() == 0 {
            g.send(&Array::from_vec(&[7.0f32, 8.0]).unwrap(), last)
                .unwrap()
                .eval()
                .unwrap();
        } else if g.rank() == last {
            let got = g.recv(&[2], Dtype::Float32, 0).unwrap();
            println!("recv={:?}", got.to_vec::<f32>().unwrap());
        }
        return;
    }
    if role().is_some() {
        return;
    }
    for n in [2, 4] {
        let ranks = run_ranks("collectives_over_a_loopback_ring", "collectives", n);
        let total: f32 = (1..=n).map(|r| r as f32).sum();
        for (rank, (code, text)) in ranks.iter().enumerate() {
            assert_eq!(*code, Some(0), "rank {rank} of {n}:\n{text}");
            assert_eq!(reported(text, "size"), n.to_string());
            assert_eq!(
                reported(text, "sum"),
                format!("{:?}", vec![total, 10.0 * total])
            );
            assert_eq!(
                reported(text, "max"),
                format!("{:?}", vec![n as f32, 10.0 * n as f32])
            );
            let gather: Vec<f32> = (1..=n).flat_map(|r| [r as f32, 10.0 * r as f32]).collect();
            assert_eq!(reported(text, "gather"), format!("{gather:?}"));
        }
        assert_eq!(reported(&ranks[n - 1].1, "recv"), "[7.0, 8.0]");
    }
}

/// `broadcast_bytes` hands rank 0's bytes to every rank (short messages
/// in one collective, longer ones in two, an empty one too), and
/// `share_random_seed` makes unkeyed random draws agree across ranks.
#[test]
fn rank_zero_bytes_and_random_seed_reach_every_rank() {
    if role().as_deref() == Some("broadcast") {
        let g = Group::init(Some("ring"), true).unwrap();
        let edge = 4 * (distributed::BROADCAST_WORDS - 1);
        for len in [0, 5, edge, edge + 1, 5000] {
            // every rank offers different bytes; rank 0's must win
            let mine: Vec<u8> = (0..len).map(|i| (i * 7 + g.rank() * 13) as u8).collect();
            let got = g.broadcast_bytes(&mine).unwrap();
            let sum: u64 = got.iter().map(|&b| u64::from(b)).sum();
            println!("bytes{len}={},{sum}", got.len());
        }
        // different local seeds, then the shared one
        mlx_metal::random::seed(1000 + g.rank() as u64).unwrap();
        g.share_random_seed().unwrap();
        let draws = mlx_metal::random::uniform(0.0, 1.0, &[4], Dtype::Float32, None).unwrap();
        println!("draws={:?}", draws.to_vec::<f32>().unwrap());
        return;
    }
    if role().is_some() {
        return;
    }
    let ranks = run_ranks(
        "rank_zero_bytes_and_random_seed_reach_every_rank",
        "broadcast",
        3,
    );
    let edge = 4 * (distributed::BROADCAST_WORDS - 1);
    for (rank, (code, text)) in ranks.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank}:\n{text}");
        for len in [0, 5, edge, edge + 1, 5000] {
            let sum: u64 = (0..len).map(|i| u64::from((i * 7) as u8)).sum();
            assert_eq!(
                reported(text, &format!("bytes{len}")),
                format!("{len},{sum}"),
                "rank {rank}"
            );
        }
        assert_eq!(
            reported(text, "draws"),
            reported(&ranks[0].1, "draws"),
            "rank {rank}"
        );
    }
    let draws = reported(&ranks[0].1, "draws");
    assert_ne!(draws, "[0.0, 0.0, 0.0, 0.0]");
}

#[test]
fn a_rank_that_dies_ends_the_others_with_an_error() {
    if role().as_deref() == Some("dies") {
        let g = Group::init(Some("ring"), true).unwrap();
        if g.rank() == 1 {
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_millis(500));
        let x = Array::ones(&[1000], Dtype::Float32).unwrap();
        match g.all_sum(&x).and_then(|s| s.eval()) {
            Ok(()) => println!("outcome=finished"),
            Err(e) => println!("outcome=error: {e}"),
        }
        return;
    }
    if role().is_some() {
        return;
    }
    let ranks = run_ranks("a_rank_that_dies_ends_the_others_with_an_error", "dies", 2);
    assert_eq!(ranks[1].0, Some(3), "{}", ranks[1].1);
    let outcome = reported(&ranks[0].1, "outcome");
    assert!(
        outcome.starts_with("error:") && outcome.contains("lost"),
        "the surviving rank reports the lost peer: {outcome}"
    );
}

/// Greedy ids of `prompt` on `model`.
fn greedy(model: &mut NativeModel, prompt: &str) -> Vec<u32> {
    let opts = GenerateOptions::default().max_tokens(12);
    model
        .generate(prompt, &opts)
        .map(|t| t.unwrap().id)
        .collect()
}

const PROMPT: &str = "The quick brown fox";

/// The fixtures whose greedy ids a parallel run must reproduce.
fn index() -> Vec<String> {
    common::fixture_models()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A rank of a parallel run: loads the fixture, spreads it over the ring
/// and prints its greedy ids (or why it refused).
fn parallel_rank() {
    let fixture = std::env::var("MLX_INFER_TEST_FIXTURE").unwrap();
    let kind = match std::env::var("MLX_INFER_TEST_KIND").unwrap().as_str() {
        "tensor" => Some(ParallelKind::Tensor),
        "pipeline" => Some(ParallelKind::Pipeline),
        _ => None,
    };
    let path = common::fixtures().join(&fixture);
    let read_before = bytes_read();
    let loaded = match kind {
        Some(kind) => NativeModel::load_distributed(&path, ComputeDtype::Auto, Some("ring"), kind),
        // one process, for comparison
        None => NativeModel::load(&path),
    };
    match loaded {
        Ok(mut model) => {
            let ids = greedy(&mut model, PROMPT);
            // what the rank holds once its weights are in memory, and
            // what it read to get there
            println!("mem={}", mlx_metal::active_memory().unwrap());
            println!("read={}", bytes_read() - read_before);
            println!("ids={ids:?}");
        }
        Err(e) => println!("mem=0\nread=0\nids=refused: {e}"),
    }
}

/// Bytes this process has read from files and sockets so far (Linux's
/// `/proc/self/io`).
fn bytes_read() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Bytes of the tensors tensor parallelism splits in `fixture`'s weights
/// (the q/k/v/o and gate/up/down projections).
fn split_bytes(fixture: &str) -> u64 {
    let dir = common::fixtures().join(fixture);
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        for (name, info) in meta.tensors() {
            let split = [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ];
            if split.iter().any(|s| name.contains(&format!(".{s}."))) {
                total += (info.data_offsets.1 - info.data_offsets.0) as u64;
            }
        }
    }
    total
}

/// What each of `n` ranks printed for `fixture` spread as `kind`: its
/// greedy ids and the memory it held.
fn parallel_run(fixture: &str, kind: &str, n: usize) -> Vec<(String, usize, u64)> {
    let ranks = run_ranks_with(
        "parallel_greedy_ids_equal_one_process",
        "parallel",
        n,
        &[
            ("MLX_INFER_TEST_FIXTURE", fixture),
            ("MLX_INFER_TEST_KIND", kind),
        ],
    );
    ranks
        .into_iter()
        .enumerate()
        .map(|(rank, (code, text))| {
            assert_eq!(
                code,
                Some(0),
                "{fixture} {kind} rank {rank} of {n}:\n{text}"
            );
            (
                reported(&text, "ids").to_string(),
                reported(&text, "mem").trim().parse().unwrap(),
                reported(&text, "read").trim().parse().unwrap(),
            )
        })
        .collect()
}

/// Tensor parallelism (the fixtures whose heads, and quantisation
/// groups, split in two) and
/// pipeline parallelism (every fixture, over 2 ranks, and over 4 where
/// there are 4 blocks) give every rank the single process's greedy ids.
#[test]
fn parallel_greedy_ids_equal_one_process() {
    if role().as_deref() == Some("parallel") {
        parallel_rank();
        return;
    }
    if role().is_some() {
        return;
    }
    let mut tensor = 0;
    for fixture in index() {
        let mut model = NativeModel::load(&common::fixtures().join(&fixture)).unwrap();
        let expected = format!("{:?}", greedy(&mut model, PROMPT));
        let blocks = model.architecture().num_layers();
        let mut runs = vec![("pipeline", 2)];
        if blocks >= 4 {
            runs.push(("pipeline", 4));
        }
        if [
            "llama",
            "qwen2",
            "qwen3",
            "gemma2",
            "qwen3-4bit",
            "qwen3-8bit",
        ]
        .contains(&fixture.as_str())
        {
            runs.push(("tensor", 2));
            tensor += 1;
        }
        // the memory one process holds and what it reads, measured the same way
        let (_, whole, whole_read) = parallel_run(&fixture, "none", 1).remove(0);
        let split = split_bytes(&fixture);
        for (kind, n) in runs {
            for (rank, (ids, mem, read)) in parallel_run(&fixture, kind, n).iter().enumerate() {
                assert_eq!(ids, &expected, "{fixture} {kind} over {n}, rank {rank}");
                eprintln!(
                    "{fixture} {kind} over {n}, rank {rank}: holds {mem} of {whole} bytes, \
                     read {read} of {whole_read} ({split} in split layers)"
                );
                // each rank holds its share of the blocks' weights, not all
                // of them (embeddings and norms stay whole)
                assert!(
                    *mem < whole,
                    "{fixture} {kind} over {n}, rank {rank} holds {mem} bytes, one process {whole}"
                );
                // a tensor-parallel rank reads only its share of the split
                // layers (the ring's own traffic is far smaller)
                if kind == "tensor" {
                    let saved = split - split / n as u64;
                    assert!(
                        *read + saved * 9 / 10 <= whole_read,
                        "{fixture} over {n}, rank {rank} read {read} bytes, one process {whole_read}; \
                         {saved} of the split layers' bytes should not have been read"
                    );
                }
            }
        }
    }
    assert_eq!(tensor, 6, "the tensor-parallel fixtures are in the index");
}

/// The Gemma 3 fixture with its one key/value head stored twice in every
/// layer (`num_key_value_heads` 2): the same function (each pair of query
/// heads reads an identical copy), now splittable over two ranks.
fn gemma3_with_two_kv_heads() -> ScratchDir {
    let dir = common::copy_model(&common::fixtures().join("gemma3_text"), "gemma3-kv2");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (name, view) in tensors.tensors() {
        let (mut data, mut shape) = (view.data().to_vec(), view.shape().to_vec());
        if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            data.extend_from_slice(view.data());
            shape[0] *= 2;
        }
        out.push((name, data, shape, view.dtype()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
    let config = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["num_key_value_heads"] = 2.into();
    std::fs::write(&config, c.to_string()).unwrap();
    dir
}

/// Gemma 3 (sliding-window layers included) over two tensor-parallel
/// ranks gives one process's greedy ids, each rank reading half of the
/// split layers.
#[test]
fn gemma3_over_two_tensor_parallel_ranks() {
    if role().is_some() {
        return;
    }
    let expected = {
        let mut model = NativeModel::load(&common::fixtures().join("gemma3_text")).unwrap();
        format!("{:?}", greedy(&mut model, PROMPT))
    };
    let dir = gemma3_with_two_kv_heads();
    let copied = {
        let mut model = NativeModel::load(&dir).unwrap();
        format!("{:?}", greedy(&mut model, PROMPT))
    };
    assert_eq!(copied, expected, "a copied key/value head changes nothing");
    let path = dir.to_str().unwrap();
    for (rank, (ids, _, _)) in parallel_run(path, "tensor", 2).iter().enumerate() {
        assert_eq!(ids, &expected, "gemma3 tensor over 2, rank {rank}");
    }
}

/// Shapes that do not split are refused with the reason, on every rank;
/// a group of one changes nothing.
#[test]
fn unsplittable_models_are_refused_clearly() {
    if role().is_some() {
        return;
    }
    let mut model = NativeModel::load(&common::fixtures().join("llama-4bit")).unwrap();
    let before = greedy(&mut model, PROMPT);
    let alone = Group::init(None, false).unwrap();
    assert_eq!(alone.size(), 1);
    model
        .architecture_mut()
        .parallelize(alone, ParallelKind::Tensor)
        .unwrap();
    assert_eq!(greedy(&mut model, PROMPT), before);
    let again = model
        .architecture_mut()
        .parallelize(Group::init(None, false).unwrap(), ParallelKind::Tensor)
        .unwrap_err();
    assert!(again.to_string().contains("already spread"), "{again}");
    for (fixture, kind, n, reason) in [
        // 64 input columns of o_proj in two are 32, under groups of 64.
        (
            "llama-4bit",
            "tensor",
            2,
            "does not fall on its groups of 64",
        ),
        (
            "gemma3_text",
            "tensor",
            2,
            "cannot be split evenly over 2 ranks",
        ),
        ("phi3", "tensor", 2, "fused qkv_proj"),
        ("llama", "pipeline", 4, "2 blocks cannot be split over 4"),
    ] {
        for (said, _, _) in parallel_run(fixture, kind, n) {
            assert!(
                said.starts_with("refused") && said.contains(reason),
                "{fixture} {kind} over {n}: {said}"
            );
        }
    }
}
