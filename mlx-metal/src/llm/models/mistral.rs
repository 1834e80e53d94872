//! Mistral: Llama's layout (mlx_lm runs it as `llama`); a `sliding_window`
//! without `layer_types` makes every layer attend over that window, as
//! Mistral 7B v0.1 does, with a rotating cache.

use crate::llm::config::Config;
use crate::llm::weights::Weights;
use crate::nn::QkNorm;
use crate::Result;

use super::llama::{decoder, sanitize, Args};
use super::Architecture;

/// Loads a Mistral model.
pub fn load(config: &Config, w: &mut Weights) -> Result<Box<dyn Architecture>> {
    let args: Args = config.parse()?;
    let windows = match (&args.layer_types, args.sliding_window) {
        (None, Some(window)) => vec![Some(window); args.num_hidden_layers.max(0) as usize],
        _ => args.windows(config)?,
    };
    sanitize(&args, w);
    let bias = args.attention_bias;
    Ok(Box::new(decoder(
        &args,
        &windows,
        w,
        bias,
        bias,
        QkNorm::None,
    )?))
}
