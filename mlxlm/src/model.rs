//! A model served by the bridge, and its token stream.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use inference::{
    Classification, ClassifyOptions, ComputeDtype, GenerateOptions, Input, Message, Metrics,
    ModelInfo, StopReason, TextModel, Token, TokenScore, TokenSource, TokenStream,
};
use serde_json::{json, Value};

use crate::bridge::Bridge;
use crate::{Error, Result, BACKEND_NAME};

/// A model loaded by Python's mlx_lm in a subprocess.
pub struct MlxLmModel {
    bridge: Bridge,
    info: ModelInfo,
    metrics: Metrics,
}

impl MlxLmModel {
    /// Starts a bridge process and loads `dir` in it, computing in the
    /// default dtype ([`ComputeDtype::Auto`]).
    pub fn load(dir: &Path) -> Result<MlxLmModel> {
        Self::load_with_dtype(dir, ComputeDtype::Auto)
    }

    /// Starts a bridge process and loads `dir` in it; the bridge casts the
    /// model's floating-point parameters (quantised layers' scales and
    /// biases included) to the type `dtype` resolves to, with the same rule
    /// as the native backend (`auto`: float32 for bfloat16/float16 weights
    /// when MLX computes on the CPU).
    pub fn load_with_dtype(dir: &Path, dtype: ComputeDtype) -> Result<MlxLmModel> {
        Self::load_with_adapter(dir, dtype, None)
    }

    /// [`load_with_dtype`](Self::load_with_dtype) with an adapter folder
    /// applied by `mlx_lm.load(..., adapter_path=adapter)`.
    pub fn load_with_adapter(
        dir: &Path,
        dtype: ComputeDtype,
        adapter: Option<&Path>,
    ) -> Result<MlxLmModel> {
        let load_error = |message: String| Error::Load {
            path: dir.to_path_buf(),
            message,
        };
        if !dir.is_dir() {
            return Err(load_error("no such model directory".into()));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(load_error("no config.json in the model directory".into()));
        }
        // The same checks as the native backend, before Python builds
        // anything from the file.
        let config_error = |message: String| Error::Load {
            path: config_path.clone(),
            message,
        };
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| config_error(e.to_string()))?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| config_error(format!("invalid JSON: {e}")))?;
        inference::check_config(&config, &config_path).map_err(|e| match e {
            inference::Error::InvalidModel { path, message } => Error::Load { path, message },
            other => config_error(other.to_string()),
        })?;
        let mut bridge = Bridge::start()?;
        bridge.send(
            &json!({"op": "load", "path": dir, "dtype": dtype.as_str(), "adapter_path": adapter}),
        )?;
        let reply = bridge.recv().map_err(|e| match e {
            Error::Python { message } => load_error(message),
            other => other,
        })?;
        let info = &reply["info"];
        let count = |key: &str| info.get(key).and_then(Value::as_u64).map(|n| n as usize);
        let text = |key: &str| info.get(key).and_then(Value::as_str).map(str::to_string);
        let mut info = ModelInfo::new(
            BACKEND_NAME,
            info["model_type"].as_str().unwrap_or_default(),
            dir,
        );
        info.vocab_size = count("vocab_size");
        info.num_layers = count("num_layers");
        info.hidden_size = count("hidden_size");
        info.quantization_bits = count("quantization_bits").map(|b| b as u32);
        info.weights_dtype = text("weights_dtype");
        info.compute_dtype = text("compute_dtype");
        info.blas = text("blas");
        info.context_length = count("context_length");
        info.adapter_path = adapter.map(Path::to_path_buf);
        Ok(MlxLmModel {
            bridge,
            info,
            metrics: Metrics::default(),
        })
    }

    /// The bridge process's id.
    pub fn process_id(&self) -> u32 {
        self.bridge.pid()
    }

    /// The prompt's token ids, as mlx_lm encodes `request` (a prompt or
    /// messages).
    fn encode(&mut self, mut request: Value) -> Result<Vec<u32>> {
        request["op"] = json!("encode");
        self.bridge.send(&request)?;
        let reply = self.bridge.recv()?;
        reply
            .get("ids")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_u64)
                    .map(|i| i as u32)
                    .collect()
            })
            .ok_or_else(|| Error::Protocol {
                line: reply.to_string(),
                problem: "expected the prompt's ids".into(),
                stderr: String::new(),
            })
    }

    fn start(&mut self, request: Value, opts: &GenerateOptions) -> TokenStream<'_> {
        if let Err(e) = opts.validate() {
            return TokenStream::failed(e);
        }
        let ids = match self.encode(request) {
            Ok(ids) => ids,
            Err(e) => return TokenStream::failed(e.into()),
        };
        if ids.is_empty() {
            return TokenStream::failed(inference::Error::InvalidArgument(
                "the prompt encodes to no tokens".into(),
            ));
        }
        if let Err(e) = inference::check_context(ids.len(), opts, self.info.context_length) {
            return TokenStream::failed(e);
        }
        let request = json!({"op": "generate", "ids": ids, "options": {
            "max_tokens": opts.max_tokens,
            "temperature": opts.temperature,
            "top_k": opts.effective_top_k(self.info.vocab_size),
            "cancellable": opts.cancel.is_some(),
            "top_p": opts.top_p,
            "min_p": opts.min_p,
            "repetition_penalty": opts.repetition_penalty,
            "repetition_context_size": opts.repetition_context_size,
            "seed": opts.seed,
        }});
        self.metrics = Metrics::default();
        self.metrics.prompt_tokens = ids.len();
        self.metrics.context_length = self.info.context_length;
        if let Err(e) = self.bridge.send(&request) {
            return TokenStream::failed(e.into());
        }
        let stops = opts.stop.clone();
        TokenStream::with_stops(
            Generation {
                model: self,
                opts: opts.clone(),
                ready: VecDeque::new(),
                reason: None,
                finished: false,
                delivered: 0,
                cancel_sent: false,
            },
            &stops,
        )
    }
}

impl TextModel for MlxLmModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// mlx_lm has no batched classification: the bridge runs the inputs one
    /// after the other and reports what the native backend reports.
    fn classify(
        &mut self,
        inputs: &[Input],
        opts: &ClassifyOptions,
    ) -> inference::Result<Vec<Classification>> {
        opts.batch.validate()?;
        let started = std::time::Instant::now();
        let items: Vec<Value> = inputs
            .iter()
            .map(|i| match i {
                Input::Prompt(p) => json!({ "prompt": p }),
                Input::Chat(m) => json!({ "messages": m }),
            })
            .collect();
        self.bridge.send(&json!({
            "op": "classify",
            "inputs": items,
            "top_k": opts.top_k,
            "labels": opts.labels,
        }))?;
        let reply = self.bridge.recv()?;
        let protocol = |problem: &str| Error::Protocol {
            line: reply.to_string(),
            problem: problem.into(),
            stderr: String::new(),
        };
        let results = reply
            .get("results")
            .and_then(Value::as_array)
            .filter(|r| r.len() == inputs.len())
            .ok_or_else(|| protocol("expected one result per input"))?;
        let mut out = Vec::with_capacity(results.len());
        let mut prompt_tokens = 0;
        for (index, r) in results.iter().enumerate() {
            let top: Vec<TokenScore> = r
                .get("top")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(|e| {
                            Some(TokenScore::new(
                                e.get(0)?.as_u64()? as u32,
                                e.get(1)?.as_str()?,
                                e.get(2)?.as_f64()?,
                            ))
                        })
                        .collect()
                })
                .filter(|t: &Vec<TokenScore>| !t.is_empty())
                .ok_or_else(|| protocol("a result without its top tokens"))?;
            let n = r.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
            prompt_tokens += n;
            let mut c = Classification::new(index, top[0].clone(), n);
            if opts.top_k > 0 {
                c.top_k = top.into_iter().take(opts.top_k).collect();
            }
            if !opts.labels.is_empty() {
                let lps: Vec<f64> = r
                    .get("labels")
                    .and_then(Value::as_array)
                    .map(|l| l.iter().filter_map(Value::as_f64).collect())
                    .filter(|l: &Vec<f64>| l.len() == opts.labels.len())
                    .ok_or_else(|| protocol("a result without its label scores"))?;
                c.score_labels(&opts.labels, lps);
            }
            out.push(c);
        }
        let mut m = Metrics::default();
        m.prompt_tokens = prompt_tokens;
        m.prompt_tps = prompt_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        self.metrics = m;
        Ok(out)
    }

    fn generate<'a>(&'a mut self, prompt: &str, opts: &GenerateOptions) -> TokenStream<'a> {
        if let Err(e) = inference::check_prompt(prompt) {
            return TokenStream::failed(e);
        }
        self.start(json!({ "prompt": prompt }), opts)
    }

    fn chat<'a>(&'a mut self, messages: &[Message], opts: &GenerateOptions) -> TokenStream<'a> {
        if let Err(e) = inference::check_messages(messages) {
            return TokenStream::failed(e);
        }
        self.start(json!({ "messages": messages }), opts)
    }

    fn metrics(&self) -> Metrics {
        self.metrics
    }
}

/// One generation in flight.
struct Generation<'a> {
    model: &'a mut MlxLmModel,
    opts: GenerateOptions,
    ready: VecDeque<Token>,
    reason: Option<StopReason>,
    finished: bool,
    /// Tokens handed to the stream: the generated count when it ends early
    /// (a stop string, a cancellation), as the native backend counts.
    delivered: usize,
    /// A cancel request went to the bridge; what follows up to its final
    /// message is dropped.
    cancel_sent: bool,
}

impl Generation<'_> {
    /// Records the final message's figures.
    fn record(&mut self, done: &Value) {
        let num = |k: &str| done.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let m = &mut self.model.metrics;
        m.prompt_tokens = num("prompt_tokens") as usize;
        m.generated_tokens = num("generated_tokens") as usize;
        m.prompt_tps = num("prompt_tps");
        m.generation_tps = num("generation_tps");
        m.peak_memory_bytes = num("peak_memory_bytes") as u64;
    }

    /// Records the final message of a generation that ended before the
    /// bridge's own end: the count is of the tokens handed to the stream.
    fn end_early(&mut self, done: &Value, reason: StopReason) {
        self.record(done);
        self.model.metrics.generated_tokens = self.delivered;
        self.reason = Some(reason);
    }

    /// Asks the bridge to stop and reads up to its final message.
    fn stop_early(&mut self, reason: StopReason) -> Result<()> {
        self.model.bridge.send(&json!({"op": "cancel"}))?;
        loop {
            let msg = self.model.bridge.recv()?;
            if msg.get("done").is_some() {
                self.end_early(&msg, reason);
                return Ok(());
            }
        }
    }

    fn step(&mut self) -> Result<()> {
        // Wait for the next message, asking the bridge to stop (it checks
        // between prefill passes and between tokens) once the caller
        // cancels.
        let msg = loop {
            if !self.cancel_sent && self.opts.is_cancelled() {
                self.model.bridge.send(&json!({"op": "cancel"}))?;
                self.cancel_sent = true;
            }
            if let Some(msg) = self.model.bridge.recv_timeout(Duration::from_millis(20))? {
                break msg;
            }
        };
        if self.cancel_sent {
            if msg.get("done").is_some() {
                self.end_early(&msg, StopReason::Cancelled);
            }
            return Ok(());
        }
        if let Some(id) = msg.get("token").and_then(Value::as_u64) {
            let text = msg.get("text").and_then(Value::as_str).unwrap_or_default();
            self.ready.push_back(Token::new(id as u32, text));
            return Ok(());
        }
        if msg.get("done").is_some() {
            self.record(&msg);
            let reason = msg
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.reason = Some(StopReason::parse(reason).ok_or_else(|| Error::Protocol {
                line: msg.to_string(),
                problem: "unknown stop reason".into(),
                stderr: String::new(),
            })?);
            return Ok(());
        }
        Err(Error::Protocol {
            line: msg.to_string(),
            problem: "expected a token or the final message".into(),
            stderr: String::new(),
        })
    }
}

impl Drop for Generation<'_> {
    /// A stream dropped before its end stops the bridge's generation, so the
    /// next request starts on a clean channel.
    fn drop(&mut self) {
        if !self.finished && self.reason.is_none() {
            let _ = self.stop_early(StopReason::Cancelled);
        }
    }
}

impl TokenSource for Generation<'_> {
    fn next_token(&mut self) -> Option<inference::Result<Token>> {
        loop {
            if let Some(token) = self.ready.pop_front() {
                self.delivered += 1;
                return Some(Ok(token));
            }
            if self.finished || self.reason.is_some() {
                return None;
            }
            if let Err(e) = self.step() {
                self.finished = true;
                return Some(Err(e.into()));
            }
        }
    }

    fn stop_reason(&self) -> Option<StopReason> {
        if self.ready.is_empty() {
            self.reason
        } else {
            None
        }
    }

    fn stop(&mut self) {
        self.ready.clear();
        if !self.finished && self.reason.is_none() && self.stop_early(StopReason::Stop).is_err() {
            self.finished = true;
        }
    }
}
