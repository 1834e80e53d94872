//! The gated MLP, `down(act(gate(x)) * up(x))`, with gate and up stored
//! apart or fused into one `gate_up_proj` (Phi-3).

use crate::llm::weights::Weights;
use crate::nn::activation::{gated, Activation};
use crate::nn::joined::Joined;
use crate::nn::params::{join, Module, Visitor};
use crate::nn::Linear;
use crate::{Array, Error, Result};

#[derive(Debug, Clone)]
enum GateUp {
    /// Stored apart; joined into one product while nothing replaces them.
    Separate {
        gate: Linear,
        up: Linear,
        joined: Option<Joined>,
    },
    Fused(Linear),
}

impl GateUp {
    /// Separate projections, joined when they can be.
    fn separate(mut gate: Linear, mut up: Linear) -> Result<GateUp> {
        let joined = Joined::join(&mut [&mut gate, &mut up])?;
        Ok(GateUp::Separate { gate, up, joined })
    }
}

/// A gated MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_up: GateUp,
    down_proj: Linear,
    /// `down_proj` with its weight kept transposed, while nothing replaces it.
    down_prepared: Option<Joined>,
    activation: Activation,
    /// Hidden units of the whole layer (all ranks together).
    units: i32,
}

impl Mlp {
    /// Loads `prefix.{gate,up,down}_proj` (on a tensor-parallel load,
    /// [`Weights::read_shares`], this rank's share of them).
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        hidden: i32,
        inter: i32,
        bias: bool,
        activation: Activation,
    ) -> Result<Mlp> {
        use crate::nn::shard::Split::{Inputs, Outputs};
        let down_proj =
            w.linear_share(&format!("{prefix}.down_proj"), inter, hidden, bias, Inputs)?;
        Ok(Mlp {
            gate_up: GateUp::separate(
                w.linear_share(&format!("{prefix}.gate_proj"), hidden, inter, bias, Outputs)?,
                w.linear_share(&format!("{prefix}.up_proj"), hidden, inter, bias, Outputs)?,
            )?,
            down_prepared: Joined::single(&down_proj)?,
            down_proj,
            activation,
            units: inter,
        })
    }

    /// Loads `prefix.gate_up_proj` (gate rows first, then up) and
    /// `prefix.down_proj`.
    pub fn load_fused(
        w: &mut Weights,
        prefix: &str,
        hidden: i32,
        inter: i32,
        activation: Activation,
    ) -> Result<Mlp> {
        let down_proj = w.linear(&format!("{prefix}.down_proj"), inter, hidden, false)?;
        Ok(Mlp {
            gate_up: GateUp::Fused(w.linear(
                &format!("{prefix}.gate_up_proj"),
                hidden,
                2 * inter,
                false,
            )?),
            down_prepared: Joined::single(&down_proj)?,
            down_proj,
            activation,
            units: inter,
        })
    }

    /// Keeps rank `rank`'s share of the hidden units for tensor
    /// parallelism over `size` ranks: gate/up keep their rows, `down_proj`
    /// the matching columns (the block then sums the ranks' outputs).
    pub fn shard(&mut self, rank: i32, size: i32) -> Result<()> {
        use crate::nn::shard::{shard_linear, Split};
        let GateUp::Separate { gate, up, .. } = &self.gate_up else {
            return Err(Error::Unsupported(
                "tensor parallelism over a fused gate_up_proj".into(),
            ));
        };
        let units = self.units;
        self.gate_up = GateUp::separate(
            shard_linear(gate, Split::Outputs, rank, size, units)?,
            shard_linear(up, Split::Outputs, rank, size, units)?,
        )?;
        self.down_proj = shard_linear(&self.down_proj, Split::Inputs, rank, size, units)?;
        self.down_prepared = Joined::single(&self.down_proj)?;
        Ok(())
    }

    /// Applies the block.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let h = match &self.gate_up {
            GateUp::Separate {
                joined: Some(j), ..
            } => {
                let [gate, up]: [Array; 2] = j
                    .forward(x)?
                    .try_into()
                    .map_err(|_| Error::InvalidArgument("gate/up split".into()))?;
                gated(self.activation, &gate, &up)?
            }
            GateUp::Separate { gate, up, .. } => {
                gated(self.activation, &gate.forward(x)?, &up.forward(x)?)?
            }
            GateUp::Fused(gate_up) => {
                let [gate, up]: [Array; 2] = gate_up
                    .forward(x)?
                    .split(2, -1)?
                    .try_into()
                    .map_err(|_| Error::InvalidArgument("gate_up split".into()))?;
                gated(self.activation, &gate, &up)?
            }
        };
        match &self.down_prepared {
            Some(down) => down.product(&h),
            None => self.down_proj.forward(&h),
        }
    }
}

impl Module for Mlp {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        match &mut self.gate_up {
            GateUp::Separate { gate, up, joined } => {
                gate.visit(&join(prefix, "gate_proj"), v)?;
                up.visit(&join(prefix, "up_proj"), v)?;
                Joined::drop_if_replaced(joined, &[gate, up]);
            }
            GateUp::Fused(gate_up) => gate_up.visit(&join(prefix, "gate_up_proj"), v)?,
        }
        self.down_proj.visit(&join(prefix, "down_proj"), v)?;
        Joined::drop_if_replaced(&mut self.down_prepared, &[&self.down_proj]);
        Ok(())
    }
}
