//! A model directory loaded for native generation: architecture, tokenizer
//! and chat template behind the `inference::TextModel` trait.

use std::path::Path;

use inference::{
    BatchOptions, BatchStream, Classification, ClassifyOptions, ComputeDtype, GenerateOptions,
    Input, Message, Metrics, ModelInfo, StopReason, TextModel, Token, TokenSource, TokenStream,
};

use crate::distributed::Group;
use crate::llm::batch::{self, BatchGeneration};
use crate::llm::chat_template::{ChatTemplate, TemplateMessage};
use crate::llm::config::Config;
use crate::llm::dtype::DtypeChoice;
use crate::llm::generate::{Generation, PREFILL_STEP};
use crate::llm::gguf;
use crate::llm::models::{self, Architecture};
use crate::llm::tokenizer::Tokenizer;
use crate::llm::validate;
use crate::llm::weights::Weights;
use crate::nn::ParallelKind;
use crate::{backend_name, Error, Result};

/// A language model running in-process on MLX.
///
/// ```no_run
/// use inference::{GenerateOptions, TextModel};
///
/// let mut model = mlx_metal::llm::NativeModel::load("models/qwen3-0.6b".as_ref())?;
/// let opts = GenerateOptions::default().max_tokens(32);
/// for token in model.generate("The capital of France is", &opts) {
///     print!("{}", token?.text);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NativeModel {
    arch: Box<dyn Architecture>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    info: ModelInfo,
    metrics: Metrics,
    /// The group the model is spread over, once [`distribute`](Self::distribute)d.
    group: Option<Group>,
    /// Set when a distributed serving engine has ended: the other ranks
    /// no longer follow, so no other engine can be made.
    followers_gone: std::cell::Cell<bool>,
}

impl NativeModel {
    /// Loads a model directory (config.json, safetensors weights,
    /// tokenizer.json and, when present, the chat template) or a single
    /// `.gguf` file; computes in the default dtype ([`ComputeDtype::Auto`]).
    pub fn load(path: &Path) -> Result<NativeModel> {
        Self::load_with_dtype(path, ComputeDtype::Auto)
    }

    /// [`load`](Self::load), computing in the type `dtype` resolves to
    /// (see [`crate::llm::dtype`]).
    pub fn load_with_dtype(path: &Path, dtype: ComputeDtype) -> Result<NativeModel> {
        NativeModel::load_share(path, dtype, None)
    }

    /// Loads a model spread over the ranks of MLX's distributed group, as
    /// [`distribute`](Self::distribute) spreads it, except that with
    /// tensor parallelism each rank reads only its share of the split
    /// layers' tensors from a directory's safetensors files (a GGUF file
    /// is read whole, then split). Every rank must call it with the same
    /// arguments.
    pub fn load_distributed(
        path: &Path,
        dtype: ComputeDtype,
        backend: Option<&str>,
        kind: ParallelKind,
    ) -> Result<NativeModel> {
        let group = Group::init(backend, true)?;
        let share = (kind == ParallelKind::Tensor && group.size() > 1)
            .then(|| (group.rank() as i32, group.size() as i32));
        drop(group);
        let mut model = NativeModel::load_share(path, dtype, share)?;
        model.distribute(backend, kind)?;
        Ok(model)
    }

    fn load_share(
        path: &Path,
        dtype: ComputeDtype,
        share: Option<(i32, i32)>,
    ) -> Result<NativeModel> {
        if path.is_file() {
            return NativeModel::load_gguf_with_dtype(path, dtype);
        }
        if !path.is_dir() {
            return Err(Error::File {
                path: path.to_path_buf(),
                message: inference::gguf::missing_model(path).into(),
            });
        }
        let (config, config_path) = Config::load(path)?;
        let tokenizer = Tokenizer::load(path, &config)?;
        validate::check_vocab_covers(&config, tokenizer.id_bound())?;
        let (arch, dtypes) = models::load_share(path, &config, &config_path, dtype, share)?;
        NativeModel::assemble(path, config, arch, tokenizer, dtypes)
    }

    /// Loads a GGUF file (see [`gguf`](crate::llm::gguf)); computes in the
    /// default dtype.
    pub fn load_gguf(path: &Path) -> Result<NativeModel> {
        Self::load_gguf_with_dtype(path, ComputeDtype::Auto)
    }

    /// [`load_gguf`](Self::load_gguf), computing in the type `dtype`
    /// resolves to.
    pub fn load_gguf_with_dtype(path: &Path, dtype: ComputeDtype) -> Result<NativeModel> {
        let g = gguf::load(path)?;
        let tokenizer =
            Tokenizer::from_json(&g.tokenizer_json, &g.tokenizer_config, &g.config, path)?;
        validate::check_vocab_covers(&g.config, tokenizer.id_bound())?;
        let mut weights = Weights::from_tensors(path, g.tensors, &g.config)?;
        let (arch, dtypes) = models::build_as(&g.config, path, &mut weights, dtype)?;
        NativeModel::assemble(path, g.config, arch, tokenizer, dtypes)
    }

    fn assemble(
        path: &Path,
        config: Config,
        arch: Box<dyn Architecture>,
        tokenizer: Tokenizer,
        dtypes: DtypeChoice,
    ) -> Result<NativeModel> {
        let template = match tokenizer.chat_template() {
            Some((source, path)) => Some(ChatTemplate::new(source, path)?),
            None => None,
        };
        let mut info = ModelInfo::new(backend_name(), config.model_type.clone(), path);
        info.vocab_size = config.vocab_size.map(|v| v as usize);
        info.num_layers = Some(arch.num_layers());
        info.hidden_size = config.hidden_size.map(|h| h as usize);
        info.quantization_bits = config.quant()?.map(|q| q.bits as u32);
        info.weights_dtype = dtypes.weights.map(|d| d.to_string());
        info.compute_dtype = dtypes.compute.map(|d| d.to_string());
        info.blas = Some(crate::blas_in_use());
        info.context_length = config
            .raw
            .get("max_position_embeddings")
            .and_then(serde_json::Value::as_u64)
            .map(|n| n as usize);
        Ok(NativeModel {
            arch,
            tokenizer,
            template,
            info,
            metrics: Metrics::default(),
            group: None,
            followers_gone: std::cell::Cell::new(false),
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The architecture (for direct forward passes).
    pub fn architecture(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    /// Spreads the model over the ranks of MLX's distributed group (the
    /// one the environment describes, through `backend`, the first
    /// available when `None`): every rank holds a share of each block
    /// ([`ParallelKind::Tensor`]) or a run of whole blocks
    /// ([`ParallelKind::Pipeline`]). Every rank must load the same model
    /// and call this with the same arguments. MLX's global random
    /// generator is then seeded alike on every rank (with a seed rank 0
    /// draws), so that unseeded sampling picks the same tokens everywhere,
    /// and on the CPU every rank computes single-row products in the form
    /// rank 0 measured faster, so that the layers every rank holds whole
    /// give the same numbers everywhere.
    ///
    /// ```no_run
    /// use mlx_metal::llm::NativeModel;
    /// use mlx_metal::nn::ParallelKind;
    ///
    /// // run as every rank of `mlx-infer launch -n 2 -- ...` or `mlx.launch`
    /// let mut model = NativeModel::load("fixtures/qwen3".as_ref())?;
    /// model.distribute(Some("ring"), ParallelKind::Tensor)?;
    /// # Ok::<(), mlx_metal::Error>(())
    /// ```
    pub fn distribute(&mut self, backend: Option<&str>, kind: ParallelKind) -> Result<()> {
        if self.group.is_some() {
            return Err(Error::InvalidArgument(
                "the model is already spread over a group".into(),
            ));
        }
        self.arch.parallelize(Group::init(backend, true)?, kind)?;
        // MLX hands out the same group to a second `init`: a handle of
        // our own for the engine's messages.
        let group = Group::init(backend, true)?;
        group.share_random_seed()?;
        crate::nn::agree_on_product_form(&group)?;
        self.group = Some(group);
        Ok(())
    }

    /// The group the model is spread over, if it is.
    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref()
    }

    /// The architecture, mutable (to attach adapters or update parameters
    /// through its [`Module`](crate::nn::Module) tree).
    pub fn architecture_mut(&mut self) -> &mut dyn Architecture {
        self.arch.as_mut()
    }

    /// Applies the adapter in folder `dir` (mlx_lm's layout:
    /// `adapters.safetensors` + `adapter_config.json`), as
    /// `mlx_lm.load(..., adapter_path=dir)` does.
    ///
    /// ```no_run
    /// let mut model = mlx_metal::llm::NativeModel::load("models/smollm2".as_ref())?;
    /// model.load_adapter("adapters".as_ref())?;
    /// # Ok::<(), mlx_metal::Error>(())
    /// ```
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        crate::train::adapter::load(self.arch.as_mut(), dir)?;
        self.info.adapter_path = Some(dir.to_path_buf());
        Ok(())
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The prompt ids a chat conversation encodes to: the template rendered
    /// with the generation prompt, encoded without adding special tokens
    /// again.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.chat_text(messages)?, false)
    }

    /// The chat template rendered for `messages`, with the generation
    /// prompt.
    fn chat_text(&self, messages: &[Message]) -> Result<String> {
        let template = self.template.as_ref().ok_or_else(|| Error::File {
            path: self.info.path.join("tokenizer_config.json"),
            message: "this model has no chat template (no `chat_template` in tokenizer_config.json and no chat_template.jinja)".into(),
        })?;
        let msgs: Vec<TemplateMessage<'_>> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect();
        template.render(
            &msgs,
            self.tokenizer.bos_token(),
            self.tokenizer.eos_token(),
        )
    }

    /// The prompt ids of each input (raw prompts as `generate` encodes
    /// them, conversations through the chat template), encoded on all
    /// cores: many short inputs (classification) would otherwise keep the
    /// device waiting on one.
    pub fn encode_inputs(&self, inputs: &[Input]) -> Result<Vec<Vec<u32>>> {
        let texts: Vec<(std::borrow::Cow<'_, str>, bool)> = inputs
            .iter()
            .map(|input| match input {
                Input::Prompt(p) => Ok((p.as_str().into(), self.tokenizer.adds_special(p))),
                Input::Chat(m) => Ok((self.chat_text(m)?.into(), false)),
            })
            .collect::<Result<_>>()?;
        self.tokenizer.encode_all(&texts)
    }

    fn stream(&mut self, prompt: Result<Vec<u32>>, opts: &GenerateOptions) -> TokenStream<'_> {
        if let Err(e) = opts.validate() {
            return TokenStream::failed(e);
        }
        let prompt = match prompt {
            Ok(p) => p,
            Err(e) => return TokenStream::failed(e.into()),
        };
        if let Err(e) = inference::check_context(prompt.len(), opts, self.info.context_length) {
            return TokenStream::failed(e);
        }
        self.metrics = Metrics::default();
        self.metrics.prompt_tokens = prompt.len();
        self.metrics.context_length = self.info.context_length;
        match Generation::start(
            self.arch.as_ref(),
            &self.tokenizer,
            &prompt,
            opts,
            PREFILL_STEP,
            self.group.is_some(),
        ) {
            Ok(generation) => TokenStream::with_stops(
                Source {
                    generation,
                    metrics: &mut self.metrics,
                    delivered: 0,
                },
                &opts.stop,
            ),
            Err(e) => TokenStream::failed(e.into()),
        }
    }
}

/// Adapts a [`Generation`] to the `inference` stream, recording metrics.
struct Source<'a> {
    generation: Generation<'a>,
    metrics: &'a mut Metrics,
    /// Tokens handed to the stream: the generated count when a stop string
    /// ends it (tokens computed ahead are not counted, as on every backend).
    delivered: usize,
}

impl TokenSource for Source<'_> {
    fn next_token(&mut self) -> Option<inference::Result<Token>> {
        let item = self.generation.next_token();
        let t = self.generation.timing();
        let m = &mut *self.metrics;
        m.prompt_tokens = t.prompt_tokens;
        m.generated_tokens = t.generated;
        m.prompt_tps = t.prompt_tps;
        m.generation_tps = t.generation_tps;
        m.peak_memory_bytes = crate::peak_memory().unwrap_or(0) as u64;
        if matches!(item, Some(Ok(_))) {
            self.delivered += 1;
        }
        item.map(|r| r.map_err(inference::Error::from))
    }

    fn stop_reason(&self) -> Option<StopReason> {
        self.generation.stop_reason()
    }

    fn stop(&mut self) {
        self.generation.stop();
        self.metrics.generated_tokens = self.delivered;
    }
}

impl TextModel for NativeModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate<'a>(&'a mut self, prompt: &str, opts: &GenerateOptions) -> TokenStream<'a> {
        if let Err(e) = inference::check_prompt(prompt) {
            return TokenStream::failed(e);
        }
        let ids = self.tokenizer.encode_prompt(prompt);
        self.stream(ids, opts)
    }

    fn chat<'a>(&'a mut self, messages: &[Message], opts: &GenerateOptions) -> TokenStream<'a> {
        if let Err(e) = inference::check_messages(messages) {
            return TokenStream::failed(e);
        }
        let ids = self.chat_prompt(messages);
        self.stream(ids, opts)
    }

    fn classify(
        &mut self,
        inputs: &[Input],
        opts: &ClassifyOptions,
    ) -> inference::Result<Vec<Classification>> {
        let started = std::time::Instant::now();
        crate::reset_peak_memory()?;
        let prompts = self.encode_inputs(inputs)?;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        inference::check_context(
            longest,
            &GenerateOptions::default(),
            self.info.context_length,
        )?;
        let out = batch::classify(self.arch.as_ref(), &self.tokenizer, &prompts, opts)?;
        let mut m = Metrics::default();
        m.prompt_tokens = prompts.iter().map(Vec::len).sum();
        m.prompt_tps = m.prompt_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        m.peak_memory_bytes = crate::peak_memory().unwrap_or(0) as u64;
        self.metrics = m;
        Ok(out)
    }

    fn generate_batch<'a>(
        &'a mut self,
        inputs: &[Input],
        opts: &GenerateOptions,
        batch: &BatchOptions,
    ) -> BatchStream<'a> {
        let prompts = match self.encode_inputs(inputs) {
            Ok(p) => p,
            Err(e) => return BatchStream::failed(e.into()),
        };
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if let Err(e) = inference::check_context(longest, opts, self.info.context_length) {
            return BatchStream::failed(e);
        }
        if let Err(e) = crate::reset_peak_memory() {
            return BatchStream::failed(e.into());
        }
        self.metrics = Metrics::default();
        self.metrics.prompt_tokens = prompts.iter().map(Vec::len).sum();
        let started = std::time::Instant::now();
        let generation =
            match BatchGeneration::new(self.arch.as_ref(), &self.tokenizer, prompts, opts, batch) {
                Ok(g) => g,
                Err(e) => return BatchStream::failed(e.into()),
            };
        let metrics = &mut self.metrics;
        let mut generation = generation;
        BatchStream::new(std::iter::from_fn(move || {
            let item = generation.next_event();
            metrics.generated_tokens = generation.generated;
            metrics.generation_tps =
                generation.generated as f64 / started.elapsed().as_secs_f64().max(1e-9);
            metrics.peak_memory_bytes = crate::peak_memory().unwrap_or(0) as u64;
            item.map(|r| r.map_err(inference::Error::from))
        }))
    }

    fn metrics(&self) -> Metrics {
        self.metrics
    }

    fn engine(
        &mut self,
        options: &inference::EngineOptions,
    ) -> inference::Result<Box<dyn inference::Engine + '_>> {
        use crate::llm::engine::{Follower, Leader, NativeEngine};
        if self.followers_gone.get() {
            return Err(inference::Error::InvalidArgument(
                "the serving engine of this distributed model has ended and the other ranks \
                 no longer follow; start every rank again"
                    .into(),
            ));
        }
        let engine = NativeEngine::new(self, options)?;
        // On a distributed model every rank runs the same engine, rank 0
        // leading (see `engine::replicated`).
        let model = engine.model;
        Ok(match model.group() {
            None => Box::new(engine),
            Some(group) if group.rank() == 0 => {
                Box::new(Leader::new(engine, group, &model.followers_gone))
            }
            Some(group) => Box::new(Follower::new(engine, group)),
        })
    }
}
