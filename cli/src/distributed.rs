//! `--distributed` and `--distributed-backend`, shared by the commands
//! that can spread a model over the ranks of a launch (`generate`, `chat`,
//! `batch`, `classify`, `serve`), and what those commands need of it:
//! which rank this is, and rank 0's input handed to the others.

use anyhow::{Context, Result};
use clap::Args;
use inference::{Distributed, Parallelism};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The distributed options of a command.
#[derive(Args, Debug, Clone, Default)]
pub struct DistributedArgs {
    /// Spread the model over the processes of a distributed launch
    /// (`mlx-infer launch`, or MLX_RANK and MLX_HOSTFILE as mlx.launch sets
    /// them): `tensor` (each rank a share of every block) or `pipeline`
    /// (each rank a run of blocks). Rank 0 reads the input and prints; the
    /// others compute with it and stay quiet.
    #[arg(long, value_parser = ["tensor", "pipeline"])]
    pub distributed: Option<String>,
    /// MLX's distributed backend for --distributed: ring, nccl, mpi or
    /// jaccl (default: the first available).
    #[arg(long, requires = "distributed")]
    pub distributed_backend: Option<String>,
}

impl DistributedArgs {
    /// The load option these flags ask for.
    pub fn load_option(&self) -> Result<Option<Distributed>> {
        let Some(kind) = &self.distributed else {
            return Ok(None);
        };
        let mut d = Distributed::new(kind.parse::<Parallelism>()?);
        d.backend = self.distributed_backend.clone();
        Ok(Some(d))
    }

    /// Whether the model is spread over the ranks of a launch.
    pub fn is_spread(&self) -> bool {
        self.distributed.is_some()
    }

    /// True on the ranks of a distributed run other than rank 0: they get
    /// their input from rank 0 and print nothing. The rank is the one MLX's
    /// group gives this process (joining it now), whatever launched it. A
    /// process that cannot join a group counts as rank 0: loading the model
    /// then says why it cannot run distributed.
    pub fn follower(&self) -> Result<bool> {
        if self.distributed.is_none() {
            return Ok(false);
        }
        Ok(group_rank(self.distributed_backend.as_deref()).is_ok_and(|r| r != 0))
    }

    /// Rank 0's `text` on every rank of a distributed run (what the other
    /// ranks pass is not read); `text` itself otherwise. Every rank must
    /// call it at the same point, after loading the model.
    pub fn rank_zero_text(&self, text: String) -> Result<String> {
        if self.distributed.is_none() {
            return Ok(text);
        }
        share_text(self.distributed_backend.as_deref(), text)
    }

    /// [`rank_zero_text`](Self::rank_zero_text) for any serialisable value.
    pub fn rank_zero_value<T: Serialize + DeserializeOwned>(&self, value: T) -> Result<T> {
        if self.distributed.is_none() {
            return Ok(value);
        }
        let shared = self.rank_zero_text(serde_json::to_string(&value)?)?;
        serde_json::from_str(&shared).context("rank 0 sent a bad message")
    }
}

/// This process's rank in MLX's distributed group (joined on first use;
/// MLX hands out the same group to the model).
#[cfg(feature = "metal")]
pub fn group_rank(backend: Option<&str>) -> Result<usize> {
    Ok(mlx_metal::distributed::Group::init(backend, true)?.rank())
}

/// Without the native backend there is no distributed run.
#[cfg(not(feature = "metal"))]
pub fn group_rank(_backend: Option<&str>) -> Result<usize> {
    anyhow::bail!("distributed runs need the native MLX backend, which this build leaves out")
}

/// Rank 0's `text` on every rank of the distributed group.
#[cfg(feature = "metal")]
fn share_text(backend: Option<&str>, text: String) -> Result<String> {
    // MLX hands out the group the model was spread over.
    let group = mlx_metal::distributed::Group::init(backend, true)?;
    let bytes = group.broadcast_bytes(text.as_bytes())?;
    String::from_utf8(bytes).context("rank 0 sent text that is not UTF-8")
}

/// Without the native backend there is no distributed run.
#[cfg(not(feature = "metal"))]
fn share_text(_backend: Option<&str>, _text: String) -> Result<String> {
    anyhow::bail!("distributed runs need the native MLX backend, which this build leaves out")
}
