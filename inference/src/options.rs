//! Options for loading models and for generation.

use std::fmt;
use std::str::FromStr;

use tokio_util::sync::CancellationToken;

/// How a model directory is loaded.
///
/// ```
/// use inference::{ComputeDtype, LoadOptions};
///
/// let opts = LoadOptions::default().backend("mlx").dtype(ComputeDtype::Model);
/// assert_eq!(opts.dtype, ComputeDtype::Model);
/// assert_eq!(LoadOptions::default().dtype, ComputeDtype::Auto);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Force a backend by name (`"mlx"`, `"metal"`, `"mlxlm"`); `None` picks
    /// the highest-priority available backend.
    pub backend: Option<String>,
    /// The floating-point type the model computes in.
    pub dtype: ComputeDtype,
    /// A fine-tuned adapter folder (`adapters.safetensors` +
    /// `adapter_config.json`, mlx_lm's layout) to apply on top of the
    /// base model.
    pub adapter_path: Option<std::path::PathBuf>,
    /// Spread the model over the processes of a distributed launch (see
    /// [`Distributed`]); `None` runs it in this process alone.
    pub distributed: Option<Distributed>,
}

/// How a model is spread over the processes ("ranks") of a distributed
/// launch. Each process loads the model, joins the group its environment
/// describes (as `mlx.launch` sets it: `MLX_RANK` and `MLX_HOSTFILE` for
/// the `ring` backend) and keeps its share; every rank then runs the same
/// generation, and rank 0 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Distributed {
    /// Split each block (tensor) or the stack of blocks (pipeline).
    pub parallelism: Parallelism,
    /// MLX's distributed backend (`ring`, `nccl`, `mpi`, `jaccl`); `None`
    /// takes the first available.
    pub backend: Option<String>,
}

impl Distributed {
    /// `parallelism` over the first available backend.
    pub fn new(parallelism: Parallelism) -> Distributed {
        Distributed {
            parallelism,
            backend: None,
        }
    }

    /// Set [`backend`](Self::backend).
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = Some(name.into());
        self
    }
}

/// Which way a model is spread over ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Every rank holds a share of every block's heads and MLP units; the
    /// ranks sum each block's outputs.
    Tensor,
    /// Every rank holds a run of whole blocks and hands its hidden states
    /// to the next.
    Pipeline,
}

impl FromStr for Parallelism {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Parallelism> {
        match s {
            "tensor" => Ok(Parallelism::Tensor),
            "pipeline" => Ok(Parallelism::Pipeline),
            other => Err(crate::Error::InvalidArgument(format!(
                "unknown parallelism `{other}` (tensor, pipeline)"
            ))),
        }
    }
}

impl LoadOptions {
    /// Spread the model over the ranks of a distributed launch.
    pub fn distributed(mut self, d: Distributed) -> Self {
        self.distributed = Some(d);
        self
    }

    /// Force the backend with this name.
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = Some(name.into());
        self
    }

    /// Set [`dtype`](Self::dtype).
    pub fn dtype(mut self, dtype: ComputeDtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// Apply the adapter in folder `dir` (see
    /// [`adapter_path`](Self::adapter_path)).
    ///
    /// ```
    /// let opts = inference::LoadOptions::default().adapter_path("adapters");
    /// assert_eq!(opts.adapter_path.as_deref(), Some(std::path::Path::new("adapters")));
    /// ```
    pub fn adapter_path(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.adapter_path = Some(dir.into());
        self
    }
}

/// The floating-point type a model computes in. Floating-point weights
/// (dense weights, norms, and the scales and biases of quantised layers)
/// are cast to it when the model is loaded; quantised weights stay
/// quantised. Activations follow the weights.
///
/// Names (for [`FromStr`] and `--dtype`): `auto`, `model`, `float32`,
/// `bfloat16`, `float16`.
///
/// ```
/// use inference::ComputeDtype;
///
/// let d: ComputeDtype = "float32".parse()?;
/// assert_eq!(d, ComputeDtype::Float32);
/// assert_eq!(d.to_string(), "float32");
/// assert!("double".parse::<ComputeDtype>().is_err());
/// # Ok::<(), inference::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    /// float32 when the weights are bfloat16/float16 and the model runs on a
    /// CPU (which has no fast half-precision matrix product, while float32
    /// ones go through BLAS); the weights' own type on GPUs and for float32
    /// weights.
    #[default]
    Auto,
    /// The weights' own type, everywhere (what mlx_lm does).
    Model,
    /// float32.
    Float32,
    /// bfloat16.
    Bfloat16,
    /// float16.
    Float16,
}

impl ComputeDtype {
    /// Every value, in the order of their names in [`NAMES`](Self::NAMES).
    pub const ALL: [ComputeDtype; 5] = [
        ComputeDtype::Auto,
        ComputeDtype::Model,
        ComputeDtype::Float32,
        ComputeDtype::Bfloat16,
        ComputeDtype::Float16,
    ];

    /// The accepted names.
    pub const NAMES: [&'static str; 5] = ["auto", "model", "float32", "bfloat16", "float16"];

    /// The name (`auto`, `model`, `float32`, `bfloat16`, `float16`).
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeDtype::Auto => "auto",
            ComputeDtype::Model => "model",
            ComputeDtype::Float32 => "float32",
            ComputeDtype::Bfloat16 => "bfloat16",
            ComputeDtype::Float16 => "float16",
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ComputeDtype {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        ComputeDtype::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                crate::Error::InvalidArgument(format!(
                    "unknown dtype `{s}` (expected one of: {})",
                    ComputeDtype::NAMES.join(", ")
                ))
            })
    }
}

/// Sampling and stopping settings for one generation.
///
/// ```
/// use inference::{CancellationToken, GenerateOptions};
///
/// let cancel = CancellationToken::new();
/// let opts = GenerateOptions::default()
///     .max_tokens(64)
///     .temperature(0.7)
///     .top_p(0.9)
///     .stop("\n\n")
///     .seed(42)
///     .cancel(cancel.clone());
/// assert_eq!(opts.max_tokens, 64);
/// assert!(!opts.is_greedy());
/// ```
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; `0.0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Nucleus sampling mass; `1.0` disables.
    pub top_p: f32,
    /// Drop tokens below `min_p` times the top probability; `0.0` disables.
    pub min_p: f32,
    /// Penalty applied to tokens seen in the recent context; `None` disables.
    pub repetition_penalty: Option<f32>,
    /// How many recent tokens the repetition penalty looks at.
    pub repetition_context_size: usize,
    /// Generation stops when the text produced contains one of these.
    pub stop: Vec<String>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Checked every step: when cancelled the stream ends with
    /// [`StopReason::Cancelled`](crate::StopReason::Cancelled).
    /// Not serialised: a cancellation belongs to the process that made it.
    #[serde(skip)]
    pub cancel: Option<CancellationToken>,
    /// Refuse prompts longer than this many tokens
    /// ([`Error::ContextExceeded`](crate::Error::ContextExceeded)); without
    /// it a prompt beyond the model's context length is only warned about.
    pub max_context: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: None,
            repetition_context_size: 20,
            stop: Vec::new(),
            seed: None,
            cancel: None,
            max_context: None,
        }
    }
}

impl GenerateOptions {
    /// Set [`max_tokens`](Self::max_tokens).
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Set [`temperature`](Self::temperature).
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Set [`top_k`](Self::top_k).
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Set [`top_p`](Self::top_p).
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Set [`min_p`](Self::min_p).
    pub fn min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }

    /// Set [`repetition_penalty`](Self::repetition_penalty).
    pub fn repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = Some(penalty);
        self
    }

    /// Set [`repetition_context_size`](Self::repetition_context_size).
    pub fn repetition_context_size(mut self, n: usize) -> Self {
        self.repetition_context_size = n;
        self
    }

    /// Add a stop string.
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop.push(s.into());
        self
    }

    /// Set [`seed`](Self::seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Refuse prompts longer than `tokens`.
    pub fn max_context(mut self, tokens: usize) -> Self {
        self.max_context = Some(tokens);
        self
    }

    /// Set the cancellation token.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// True when sampling reduces to argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// `top_k` as a sampler over `vocab` ids applies it: `0` (off) when it
    /// would keep every id, so that backends agree on out-of-range values.
    ///
    /// ```
    /// use inference::GenerateOptions;
    /// assert_eq!(GenerateOptions::default().top_k(100_000).effective_top_k(Some(640)), 0);
    /// assert_eq!(GenerateOptions::default().top_k(40).effective_top_k(Some(640)), 40);
    /// ```
    pub fn effective_top_k(&self, vocab: Option<usize>) -> usize {
        match vocab {
            Some(v) if self.top_k >= v => 0,
            _ => self.top_k,
        }
    }

    /// True when the cancellation token has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Checks the values for consistency, naming the first one at fault.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: String| Err(crate::Error::InvalidArgument(what));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if let Some(r) = self.repetition_penalty {
            if !r.is_finite() || r <= 0.0 {
                return bad(format!(
                    "repetition_penalty must be a finite number > 0, got {r}"
                ));
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_greedy_and_valid() {
        let o = GenerateOptions::default();
        assert!(o.is_greedy());
        assert!(o.validate().is_ok());
        assert!(!o.is_cancelled());
    }

    #[test]
    fn validate_names_the_bad_value() {
        let e = GenerateOptions::default()
            .top_p(0.0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("top_p"), "{e}");
        let e = GenerateOptions::default()
            .temperature(-1.0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
        let e = GenerateOptions::default().stop("").validate().unwrap_err();
        assert!(e.to_string().contains("stop"), "{e}");
    }

    #[test]
    fn compute_dtypes_parse_their_names_and_reject_others() {
        for (d, name) in ComputeDtype::ALL.iter().zip(ComputeDtype::NAMES) {
            assert_eq!(name.parse::<ComputeDtype>().unwrap(), *d);
            assert_eq!(d.to_string(), name);
        }
        assert_eq!(ComputeDtype::default(), ComputeDtype::Auto);
        for bad in ["", "f32", "Float32", "bf16", "float64", "auto "] {
            let e = bad.parse::<ComputeDtype>().unwrap_err();
            assert!(matches!(e, crate::Error::InvalidArgument(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(&format!("`{bad}`")), "{text}");
            assert!(
                text.contains("auto, model, float32, bfloat16, float16"),
                "{text}"
            );
        }
    }

    #[test]
    fn cancellation_is_seen() {
        let token = CancellationToken::new();
        let o = GenerateOptions::default().cancel(token.clone());
        assert!(!o.is_cancelled());
        token.cancel();
        assert!(o.is_cancelled());
    }
}
