//! `mlx-infer launch`: runs N copies of an `mlx-infer` command on this
//! machine as the ranks of MLX's `ring` backend over loopback (or of its
//! `nccl` backend, one GPU per rank), setting `MLX_RANK` and
//! `MLX_HOSTFILE` (`MLX_WORLD_SIZE`, `NCCL_HOST_IP`, `NCCL_PORT` and
//! `CUDA_VISIBLE_DEVICES`) as `mlx.launch` does. Rank 0 keeps the
//! terminal; the others' output is shown only if they fail. When a rank
//! fails, the others are stopped and its exit status is returned; ranks
//! still running 30 s after rank 0 ended are stopped too. SIGTERM sent to
//! the launch is passed on to rank 0 (to the others, once rank 0 is gone);
//! Ctrl-C at a terminal reaches every rank by itself.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

/// `mlx-infer launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Number of processes (ranks).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u16).range(1..=64))]
    ranks: u16,
    /// MLX's distributed backend the ranks meet through: `ring` (TCP over
    /// loopback, on any machine) or `nccl` (one NVIDIA GPU per rank: rank
    /// r gets the r-th of CUDA_VISIBLE_DEVICES, or GPU r). Give the
    /// command the same `--distributed-backend`.
    #[arg(long, default_value = "ring", value_parser = ["ring", "nccl"])]
    backend: String,
    /// The mlx-infer command each rank runs, after `--` (e.g.
    /// `-- generate --model M --prompt P --distributed tensor`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// A JSON hostfile for `n` ranks on free loopback ports, as the `ring`
/// backend reads it.
fn hostfile(n: usize) -> Result<tempfile_path::TempPath> {
    let mut hosts = Vec::with_capacity(n);
    for _ in 0..n {
        let port = free_port()?;
        hosts.push(vec![format!("127.0.0.1:{port}")]);
    }
    let path = std::env::temp_dir().join(format!("mlx-infer-hosts-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&hosts)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(tempfile_path::TempPath(path))
}

/// Removes the hostfile when the launch ends.
mod tempfile_path {
    /// A file deleted on drop.
    pub struct TempPath(pub std::path::PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// How long the other ranks may run on once rank 0 has ended (they end
/// with it: a generation's last step, or a server's farewell).
const LEADER_GRACE: Duration = Duration::from_secs(30);

/// A free port on the loopback interface.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free loopback port")?
        .port())
}

/// The environment rank `rank` of `n` needs for `backend`, as
/// `mlx.launch` sets it: `ring` reads the hostfile, `nccl` meets at
/// `127.0.0.1:nccl_port` and binds one GPU (`gpus`: the user's
/// CUDA_VISIBLE_DEVICES, if set).
fn rank_env(
    backend: &str,
    rank: usize,
    n: usize,
    hostfile: &std::path::Path,
    nccl_port: u16,
    gpus: Option<&str>,
) -> Result<Vec<(&'static str, String)>> {
    let mut env = vec![("MLX_RANK", rank.to_string())];
    if backend == "nccl" {
        let gpu = match gpus {
            None => rank.to_string(),
            Some(list) => {
                let listed: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .collect();
                match listed.get(rank) {
                    Some(g) => g.to_string(),
                    None => bail!(
                        "CUDA_VISIBLE_DEVICES={list:?} lists {} GPU(s) for {n} ranks (one each)",
                        listed.len()
                    ),
                }
            }
        };
        env.extend([
            ("MLX_WORLD_SIZE", n.to_string()),
            ("NCCL_HOST_IP", "127.0.0.1".to_string()),
            ("NCCL_PORT", nccl_port.to_string()),
            ("CUDA_VISIBLE_DEVICES", gpu),
        ]);
    } else {
        env.push(("MLX_HOSTFILE", hostfile.display().to_string()));
    }
    Ok(env)
}

/// Runs `mlx-infer launch`; returns the exit status.
pub fn run(args: LaunchArgs) -> Result<i32> {
    if args.command.first().map(String::as_str) == Some("launch") {
        bail!("`launch` cannot launch itself");
    }
    let exe = std::env::current_exe().context("cannot find this program")?;
    let n = usize::from(args.ranks);
    let hosts = hostfile(n)?;
    let nccl_port = free_port()?;
    let gpus = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    let logs: Vec<tempfile_path::TempPath> = (0..n)
        .map(|rank| tempfile_path::TempPath(hosts.0.with_extension(format!("rank{rank}.log"))))
        .collect();
    for (rank, log) in logs.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command).envs(rank_env(
            &args.backend,
            rank,
            n,
            &hosts.0,
            nccl_port,
            gpus.as_deref(),
        )?);
        if rank > 0 {
            let log = std::fs::File::create(&log.0)
                .with_context(|| format!("cannot write {}", log.0.display()))?;
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start rank {rank}"))?;
        children.push(Some(child));
    }
    // SIGTERM sent to the launch goes on to rank 0, whose end ends the
    // others (a server finishes its streams first). Ctrl-C at a terminal
    // reaches every rank by itself.
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term))
        .context("cannot watch for SIGTERM")?;
    signal_hook::flag::register(
        signal_hook::consts::SIGINT,
        Arc::new(AtomicBool::new(false)),
    )
    .context("cannot watch for Ctrl-C")?;
    let mut status = 0;
    let mut running = n;
    // When rank 0 ended, with the others still running.
    let mut leader_ended: Option<Instant> = None;
    while running > 0 {
        if term.swap(false, Ordering::SeqCst) {
            match &children[0] {
                Some(leader) => {
                    let pid = nix::unistd::Pid::from_raw(leader.id() as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
                // no rank 0 to end them: stop what is left
                None => {
                    for other in children.iter_mut().flatten() {
                        let _ = other.kill();
                    }
                }
            }
        }
        if leader_ended.is_some_and(|t| t.elapsed() > LEADER_GRACE) {
            for (rank, other) in children.iter_mut().enumerate() {
                if let Some(child) = other {
                    eprintln!(
                        "rank {rank} of {n} still ran {} s after rank 0 ended; stopping it",
                        LEADER_GRACE.as_secs()
                    );
                    let _ = child.kill();
                }
            }
            if status == 0 {
                status = 1;
            }
            leader_ended = None;
        }
        for rank in 0..n {
            let Some(child) = children[rank].as_mut() else {
                continue;
            };
            let Some(exit) = child.try_wait()? else {
                continue;
            };
            children[rank] = None;
            running -= 1;
            if rank == 0 && running > 0 {
                leader_ended = Some(Instant::now());
            }
            let code = exit.code().unwrap_or(1);
            if code != 0 && status == 0 {
                status = code;
                if rank > 0 {
                    eprint!(
                        "{}",
                        std::fs::read_to_string(&logs[rank].0).unwrap_or_default()
                    );
                }
                eprintln!("rank {rank} of {n} failed (exit status {code}); stopping the others");
                for other in children.iter_mut().flatten() {
                    let _ = other.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::rank_env;
    use std::path::Path;

    #[test]
    fn each_backend_gets_the_environment_mlx_launch_sets() {
        let hosts = Path::new("/tmp/hosts.json");
        assert_eq!(
            rank_env("ring", 1, 2, hosts, 9000, None).unwrap(),
            vec![
                ("MLX_RANK", "1".to_string()),
                ("MLX_HOSTFILE", "/tmp/hosts.json".to_string())
            ]
        );
        let nccl = rank_env("nccl", 1, 4, hosts, 9000, None).unwrap();
        assert_eq!(
            nccl,
            vec![
                ("MLX_RANK", "1".to_string()),
                ("MLX_WORLD_SIZE", "4".to_string()),
                ("NCCL_HOST_IP", "127.0.0.1".to_string()),
                ("NCCL_PORT", "9000".to_string()),
                ("CUDA_VISIBLE_DEVICES", "1".to_string()),
            ]
        );
        // rank r takes the r-th of the GPUs the user allowed
        let picked = rank_env("nccl", 1, 2, hosts, 9000, Some("4, 6")).unwrap();
        assert_eq!(
            picked.last().unwrap(),
            &("CUDA_VISIBLE_DEVICES", "6".to_string())
        );
        // fewer GPUs than ranks, or none, is an error, not a shared GPU
        let err = rank_env("nccl", 2, 3, hosts, 9000, Some("2,3")).unwrap_err();
        assert!(
            err.to_string().contains("lists 2 GPU(s) for 3 ranks"),
            "{err}"
        );
        assert!(rank_env("nccl", 0, 2, hosts, 9000, Some("")).is_err());
    }
}
