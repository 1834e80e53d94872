//! Loading a model's safetensors (single file or sharded) and handing out
//! tensors by name with their expected shapes checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::llm::config::{Config, QuantConfig};
use crate::nn::shard::{share, Split};
use crate::nn::{Embedding, Linear, RmsNorm};
use crate::{load_safetensors, Array, Dtype, Error, QuantizedWeight, Result};

/// Every tensor of a model, with the file it came from.
pub struct Weights {
    dir: PathBuf,
    tensors: HashMap<String, (Array, PathBuf)>,
    quant: Option<QuantConfig>,
    config: Config,
    /// Where each tensor of a safetensors file lies, by name.
    sources: HashMap<String, Source>,
    /// `(rank, size)` of a tensor-parallel load: split layers are read as
    /// this rank's share ([`linear_share`](Self::linear_share)).
    share: Option<(i32, i32)>,
    /// The compute type [`apply_compute_dtype`](Self::apply_compute_dtype)
    /// chose, for tensors read later.
    compute: Option<Dtype>,
}

/// Where a tensor's bytes lie in its safetensors file.
#[derive(Debug, Clone)]
struct Source {
    file: PathBuf,
    /// The first byte of its data, from the start of the file.
    start: u64,
    shape: Vec<i32>,
    dtype: Dtype,
}

/// Reads `len` bytes at `offset` of `file`.
fn read_at(file: &std::fs::File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::File {
            path: path.to_path_buf(),
            message: format!("cannot read {len} bytes at byte {offset}: {e}"),
        })?;
    Ok(buf)
}

/// The weight files of `dir`: those named by `model.safetensors.index.json`,
/// else every `*.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::File {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::File {
            path: index.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::File {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::File {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::File {
            path: dir.to_path_buf(),
            message: "no *.safetensors weight files".into(),
        });
    }
    Ok(files)
}

/// Checks a file's header with the `safetensors` crate (offsets contiguous
/// and matching each tensor's shape and dtype), that the data fits the file
/// and that every dimension fits MLX's 32-bit shapes, so a truncated or
/// corrupt file fails here, naming itself and the tensor, not later in MLX.
pub fn check_header(path: &Path) -> Result<()> {
    header_sources(path).map(|_| ())
}

/// [`check_header`], and where each tensor of the file lies.
fn header_sources(path: &Path) -> Result<Vec<(String, Source)>> {
    use std::io::Read;
    let bad = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .map_err(|_| bad("truncated: shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || 8 + n > len {
        return Err(bad(format!(
            "corrupt: header length {n} does not fit the file ({len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    check_shapes(&header).map_err(|m| bad(format!("corrupt header: {m}")))?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("corrupt header: {e}")))?;
    let data_len = len - 8 - n;
    let mut tensors: Vec<_> = metadata.tensors().into_iter().collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    let mut sources = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        if info.shape.iter().any(|&d| d > i32::MAX as usize) {
            return Err(bad(format!(
                "tensor `{name}` has shape {:?}; MLX dimensions must be below 2^31",
                info.shape
            )));
        }
        let end = info.data_offsets.1 as u64;
        if end > data_len {
            return Err(bad(format!(
                "truncated: tensor `{name}` ends at byte {end} of the data but the file holds {data_len}"
            )));
        }
        // tensors of a type MLX lacks are refused when loaded, not here
        if let Some(dtype) = Dtype::from_safetensors_name(&format!("{:?}", info.dtype)) {
            sources.push((
                name,
                Source {
                    file: path.to_path_buf(),
                    start: 8 + n + info.data_offsets.0 as u64,
                    shape: info.shape.iter().map(|&d| d as i32).collect(),
                    dtype,
                },
            ));
        }
    }
    Ok(sources)
}

/// Checks that every tensor's `shape` in a safetensors header is a list of
/// dimensions that fit MLX's 32-bit shapes and that the tensors' data
/// ranges follow one another without gaps or overlaps, naming the tensor
/// (the safetensors crate's own messages for these name none, or whichever
/// tensor its order reaches first).
fn check_shapes(header: &[u8]) -> std::result::Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let Some(entries) = value.as_object() else {
        return Err("not a JSON object".into());
    };
    let mut ranges = Vec::new();
    for (name, entry) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| format!("tensor `{name}`: `data_offsets` must be [start, end]"))?;
        ranges.push((offsets, name));
    }
    ranges.sort();
    let mut end = 0;
    for ((a, b), name) in ranges {
        if a != end {
            return Err(format!(
                "tensor `{name}`'s data starts at byte {a}, {} the previous tensor's end ({end})",
                if a < end {
                    "inside"
                } else {
                    "after a gap from"
                }
            ));
        }
        end = b;
    }
    for (name, entry) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("tensor `{name}`: `shape` must be a list of dimensions"))?;
        for d in shape {
            match d.as_u64() {
                Some(d) if d <= i32::MAX as u64 => {}
                _ => {
                    return Err(format!(
                        "tensor `{name}` has shape {}; MLX dimensions must be integers below 2^31",
                        serde_json::Value::Array(shape.clone())
                    ))
                }
            }
        }
    }
    Ok(())
}

impl Weights {
    /// Loads every weight file of `dir` (lazily: MLX reads tensors when
    /// they are first used). Names under `strip_prefix` lose it.
    pub fn load(dir: &Path, config: &Config, strip_prefix: Option<&str>) -> Result<Weights> {
        let mut tensors = HashMap::new();
        let mut sources = HashMap::new();
        for file in weight_files(dir)? {
            if !file.is_file() {
                return Err(Error::File {
                    path: file,
                    message: "weight file listed in model.safetensors.index.json is missing".into(),
                });
            }
            let strip = |name: String| match strip_prefix {
                Some(p) => name.strip_prefix(p).map(str::to_string).unwrap_or(name),
                None => name,
            };
            for (name, source) in header_sources(&file)? {
                sources.insert(strip(name), source);
            }
            for (name, array) in load_safetensors(&file)?.tensors {
                tensors.insert(strip(name), (array, file.clone()));
            }
        }
        Ok(Weights {
            dir: dir.to_path_buf(),
            quant: config.quant()?,
            tensors,
            config: config.clone(),
            sources,
            share: None,
            compute: None,
        })
    }

    /// Weights already in memory (from a GGUF file, say), under their
    /// Hugging Face names; `file` names their source in errors.
    pub fn from_tensors(
        file: &Path,
        tensors: HashMap<String, Array>,
        config: &Config,
    ) -> Result<Weights> {
        Ok(Weights {
            dir: file.to_path_buf(),
            quant: config.quant()?,
            tensors: tensors
                .into_iter()
                .map(|(name, array)| (name, (array, file.to_path_buf())))
                .collect(),
            config: config.clone(),
            sources: HashMap::new(),
            share: None,
            compute: None,
        })
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn missing(&self, name: &str) -> Error {
        // name the weight file when there is only one
        let files: std::collections::BTreeSet<&PathBuf> =
            self.tensors.values().map(|(_, f)| f).collect();
        let path = match files.iter().next() {
            Some(only) if files.len() == 1 => (*only).clone(),
            _ => self.dir.clone(),
        };
        Error::File {
            path,
            message: format!("tensor `{name}` is missing from the weights"),
        }
    }

    /// Takes tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        let (array, file) = self
            .tensors
            .remove(name)
            .ok_or_else(|| self.missing(name))?;
        if array.shape() != shape {
            return Err(Error::File {
                path: file,
                message: format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    array.shape()
                ),
            });
        }
        Ok(array)
    }

    /// The quantisation of the module at `prefix`, if it is quantised.
    fn quant_for(&self, prefix: &str) -> Result<Option<QuantConfig>> {
        let packed = self
            .tensors
            .get(&format!("{prefix}.weight"))
            .is_some_and(|(a, _)| a.dtype() == Dtype::Uint32);
        let has_scales = self.has(&format!("{prefix}.scales"));
        if !packed && !has_scales {
            return Ok(None);
        }
        let file = self
            .tensors
            .get(&format!("{prefix}.weight"))
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| self.dir.clone());
        if !has_scales {
            return Err(Error::File {
                path: file,
                message: format!("`{prefix}.weight` is quantised but `{prefix}.scales` is missing"),
            });
        }
        let q = match self.config.quant_override(prefix) {
            Some(Some(q)) => Some(q),
            Some(None) => None,
            None => self.quant,
        };
        q.map(Some).ok_or_else(|| Error::File {
            path: file,
            message: format!("`{prefix}` is quantised but config.json has no `quantization` block"),
        })
    }

    fn quantized(
        &mut self,
        prefix: &str,
        q: QuantConfig,
        out: i32,
        inp: i32,
    ) -> Result<QuantizedWeight> {
        if inp % q.group_size != 0 || (inp * q.bits) % 32 != 0 {
            return Err(Error::File {
                path: self.config.path.clone(),
                message: format!(
                    "`{prefix}`: input width {inp} (from the sizes in this file) does not fit quantisation group size {} with {} bits",
                    q.group_size, q.bits
                ),
            });
        }
        let groups = inp / q.group_size;
        Ok(QuantizedWeight {
            weight: self.take(&format!("{prefix}.weight"), &[out, inp * q.bits / 32])?,
            scales: self.take(&format!("{prefix}.scales"), &[out, groups])?,
            biases: self.take(&format!("{prefix}.biases"), &[out, groups])?,
            group_size: q.group_size,
            bits: q.bits,
        })
    }

    /// A linear layer `prefix` mapping `inp` → `out` features.
    pub fn linear(&mut self, prefix: &str, inp: i32, out: i32, bias: bool) -> Result<Linear> {
        let b = if bias {
            Some(self.take(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(match self.quant_for(prefix)? {
            Some(q) => Linear::Quantized {
                weight: self.quantized(prefix, q, out, inp)?,
                bias: b,
            },
            None => Linear::Dense {
                weight: self.take(&format!("{prefix}.weight"), &[out, inp])?,
                bias: b,
            },
        })
    }

    /// Makes this a tensor-parallel load for rank `rank` of `size`: the
    /// layers built with [`linear_share`](Self::linear_share) hold this
    /// rank's share, read from the files alone.
    pub fn read_shares(&mut self, rank: i32, size: i32) {
        self.share = (size > 1).then_some((rank, size));
    }

    /// [`linear`](Self::linear), or on a tensor-parallel load
    /// ([`read_shares`](Self::read_shares)) this rank's share of it, split
    /// along `split` as [`shard_linear`](crate::nn::shard::shard_linear)
    /// would split it: only the share's bytes are read from the
    /// safetensors file, so no rank ever holds the whole tensor. A layer
    /// that cannot be read that way (weights not from a safetensors
    /// file, a split the shapes refuse) is read whole, for the model's
    /// `parallelize` to split or refuse with its reason.
    pub fn linear_share(
        &mut self,
        prefix: &str,
        inp: i32,
        out: i32,
        bias: bool,
        split: Split,
    ) -> Result<Linear> {
        let Some((rank, size)) = self.share else {
            return self.linear(prefix, inp, out, bias);
        };
        let quant = self.quant_for(prefix)?;
        let mut names = vec![format!("{prefix}.weight")];
        if quant.is_some() {
            names.extend([format!("{prefix}.scales"), format!("{prefix}.biases")]);
        }
        if bias {
            names.push(format!("{prefix}.bias"));
        }
        let fits = quant.is_none_or(|q| inp % q.group_size == 0 && (inp * q.bits) % 32 == 0);
        let from_files = names.iter().all(|n| self.sources.contains_key(n));
        let qb = quant.map(|q| (q.group_size, q.bits));
        let sh = match share(split, out, inp, qb, bias, rank, size) {
            Ok(sh) if fits && from_files => sh,
            _ => return self.linear(prefix, inp, out, bias),
        };
        let b = match sh.bias {
            Some(range) => Some(self.take_part(&format!("{prefix}.bias"), &[out], 0, range)?),
            None => None,
        };
        Ok(match quant {
            None => Linear::Dense {
                weight: self.take_part(
                    &format!("{prefix}.weight"),
                    &[out, inp],
                    sh.axis,
                    sh.weight,
                )?,
                bias: b,
            },
            Some(q) => {
                let groups = inp / q.group_size;
                Linear::Quantized {
                    weight: QuantizedWeight {
                        weight: self.take_part(
                            &format!("{prefix}.weight"),
                            &[out, inp * q.bits / 32],
                            sh.axis,
                            sh.weight,
                        )?,
                        scales: self.take_part(
                            &format!("{prefix}.scales"),
                            &[out, groups],
                            sh.axis,
                            sh.groups,
                        )?,
                        biases: self.take_part(
                            &format!("{prefix}.biases"),
                            &[out, groups],
                            sh.axis,
                            sh.groups,
                        )?,
                        group_size: q.group_size,
                        bits: q.bits,
                    },
                    bias: b,
                }
            }
        })
    }

    /// Takes tensor `name` (checking its shape is `shape`), reading only
    /// its `[start, end)` along `axis` (0 or 1) from its file, in the
    /// compute type.
    fn take_part(
        &mut self,
        name: &str,
        shape: &[i32],
        axis: i32,
        (start, end): (i32, i32),
    ) -> Result<Array> {
        // the lazy whole tensor is dropped unread
        let whole = self.take(name, shape)?;
        let src = self.sources.get(name).ok_or_else(|| self.missing(name))?;
        let bad = |message: String| Error::File {
            path: src.file.clone(),
            message,
        };
        if src.shape != shape || whole.dtype() != src.dtype && !whole.dtype().is_float() {
            return Err(bad(format!(
                "tensor `{name}` changed after loading; it cannot be read in part"
            )));
        }
        let elem = src.dtype.size() as u64;
        let (rows, cols) = match shape {
            [n] => (1u64, *n as u64),
            [r, c] => (*r as u64, *c as u64),
            _ => return Err(bad(format!("tensor `{name}` is not a matrix or a vector"))),
        };
        let file = std::fs::File::open(&src.file).map_err(|e| bad(e.to_string()))?;
        let width = (end - start) as u64;
        let (bytes, part_shape) = match (shape.len(), axis) {
            // whole rows: one read
            (2, 0) => (
                read_at(
                    &file,
                    &src.file,
                    src.start + start as u64 * cols * elem,
                    (width * cols * elem) as usize,
                )?,
                vec![end - start, cols as i32],
            ),
            (1, 0) => (
                read_at(
                    &file,
                    &src.file,
                    src.start + start as u64 * elem,
                    (width * elem) as usize,
                )?,
                vec![end - start],
            ),
            // a run of columns: one read per row
            (2, 1) => {
                let mut bytes = Vec::with_capacity((rows * width * elem) as usize);
                for r in 0..rows {
                    let offset = src.start + (r * cols + start as u64) * elem;
                    bytes.extend(read_at(&file, &src.file, offset, (width * elem) as usize)?);
                }
                (bytes, vec![rows as i32, end - start])
            }
            _ => return Err(bad(format!("tensor `{name}` has no axis {axis}"))),
        };
        let part = Array::from_bytes(&bytes, &part_shape, src.dtype)?;
        match self.compute {
            Some(t) if part.dtype().is_float() && part.dtype() != t => part.astype(t),
            _ => Ok(part),
        }
    }

    /// An embedding table `prefix` of `vocab` rows of `dim`.
    pub fn embedding(&mut self, prefix: &str, vocab: i32, dim: i32) -> Result<Embedding> {
        Ok(match self.quant_for(prefix)? {
            Some(q) => Embedding::Quantized(self.quantized(prefix, q, vocab, dim)?),
            None => Embedding::Dense(self.take(&format!("{prefix}.weight"), &[vocab, dim])?),
        })
    }

    /// An RMS norm `prefix` over `dim` features.
    pub fn rms_norm(&mut self, prefix: &str, dim: i32, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm::new(
            self.take(&format!("{prefix}.weight"), &[dim])?,
            eps,
        ))
    }

    /// A Gemma-style RMS norm (scales by `1 + w`).
    pub fn rms_norm_offset_one(&mut self, prefix: &str, dim: i32, eps: f32) -> Result<RmsNorm> {
        RmsNorm::offset_one(self.take(&format!("{prefix}.weight"), &[dim])?, eps)
    }

    /// Fails when tensors are left that the model did not take: a
    /// checkpoint with weights the config does not describe (more layers,
    /// another family) is refused, as mlx_lm refuses it, naming them.
    pub fn check_all_used(&self) -> Result<()> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let file = self.tensors[names[0]].1.clone();
        let shown: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
        let more = if names.len() > 5 {
            format!(" and {} more", names.len() - 5)
        } else {
            String::new()
        };
        Err(Error::File {
            path: file,
            message: format!(
                "{} tensor(s) that config.json does not describe: {}{more}",
                names.len(),
                shown.join(", ")
            ),
        })
    }

    /// Drops tensors the model does not use (e.g. precomputed rotary
    /// frequencies, vision towers).
    pub fn discard(&mut self, pred: impl Fn(&str) -> bool) {
        self.tensors.retain(|k, _| !pred(k));
    }

    /// Applies the compute dtype: finds the weights' floating-point type
    /// (the one holding the most elements; for quantised weights that is
    /// their scales') and casts every floating-point tensor — dense
    /// weights, norms, the scales and biases of quantised layers — to the
    /// type `requested` resolves to (see [`crate::llm::dtype`]). Packed
    /// quantised weights stay as they are. The cast is lazy: MLX converts
    /// each tensor when it is first used.
    pub fn apply_compute_dtype(
        &mut self,
        requested: inference::ComputeDtype,
    ) -> Result<crate::llm::dtype::DtypeChoice> {
        let mut sizes: Vec<(Dtype, usize)> = Vec::new();
        for (a, _) in self.tensors.values().filter(|(a, _)| a.dtype().is_float()) {
            match sizes.iter_mut().find(|(d, _)| *d == a.dtype()) {
                Some((_, n)) => *n += a.size(),
                None => sizes.push((a.dtype(), a.size())),
            }
        }
        let stored = sizes.iter().max_by_key(|(_, n)| *n).map(|(d, _)| *d);
        let on_cpu = crate::llm::dtype::default_device_is_cpu()?;
        let target = crate::llm::dtype::resolve(requested, stored, on_cpu);
        self.compute = target;
        if let Some(target) = target {
            for (a, _) in self.tensors.values_mut() {
                if a.dtype().is_float() && a.dtype() != target {
                    *a = a.astype(target)?;
                }
            }
        }
        Ok(crate::llm::dtype::DtypeChoice {
            weights: stored,
            compute: target.or(stored),
        })
    }
}
