//! A model directory loaded for native generation: architecture, tokenizer
//! and chat template behind the `inference::TextModel` trait.

use std::path::Path;

use inference::{
    ComputeDtype, GenerateOptions, Message, Metrics, ModelInfo, StopReason, TextModel, Token,
    TokenSource, TokenStream,
};

use crate::llm::chat_template::{ChatTemplate, TemplateMessage};
use crate::llm::config::Config;
use crate::llm::dtype::DtypeChoice;
use crate::llm::generate::{Generation, PREFILL_STEP};
use crate::llm::gguf;
use crate::llm::models::{self, Architecture};
use crate::llm::tokenizer::Tokenizer;
use crate::llm::weights::Weights;
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
        let (arch, dtypes) = models::load_as(path, &config, &config_path, dtype)?;
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
        info.blas = Some(crate::blas_info().to_string());
        Ok(NativeModel {
            arch,
            tokenizer,
            template,
            info,
            metrics: Metrics::default(),
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

    /// The prompt ids a chat conversation encodes to: the template rendered
    /// with the generation prompt, encoded without adding special tokens
    /// again.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
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
        let text = template.render(
            &msgs,
            self.tokenizer.bos_token(),
            self.tokenizer.eos_token(),
        )?;
        self.tokenizer.encode(&text, false)
    }

    fn stream(&mut self, prompt: Result<Vec<u32>>, opts: &GenerateOptions) -> TokenStream<'_> {
        if let Err(e) = opts.validate() {
            return TokenStream::failed(e);
        }
        let prompt = match prompt {
            Ok(p) => p,
            Err(e) => return TokenStream::failed(e.into()),
        };
        self.metrics = Metrics::default();
        self.metrics.prompt_tokens = prompt.len();
        match Generation::start(
            self.arch.as_ref(),
            &self.tokenizer,
            &prompt,
            opts,
            PREFILL_STEP,
        ) {
            Ok(generation) => TokenStream::with_stops(
                Source {
                    generation,
                    metrics: &mut self.metrics,
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
        item.map(|r| r.map_err(inference::Error::from))
    }

    fn stop_reason(&self) -> Option<StopReason> {
        self.generation.stop_reason()
    }

    fn stop(&mut self) {
        self.generation.stop();
    }
}

impl TextModel for NativeModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate<'a>(&'a mut self, prompt: &str, opts: &GenerateOptions) -> TokenStream<'a> {
        let ids = self.tokenizer.encode_prompt(prompt);
        self.stream(ids, opts)
    }

    fn chat<'a>(&'a mut self, messages: &[Message], opts: &GenerateOptions) -> TokenStream<'a> {
        let ids = self.chat_prompt(messages);
        self.stream(ids, opts)
    }

    fn metrics(&self) -> Metrics {
        self.metrics
    }
}
