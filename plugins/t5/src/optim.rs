//! Optimizers written out in tensor ops, so their whole state can be saved and a resumed
//! run continues bit for bit (tch's own optimizers cannot save their state).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use ehrprep_plugin_api::requests::OptimizerKind;

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// `peak` for the first `warmup` steps, then `peak * sqrt(warmup / step)`: with
    /// `peak = 1/sqrt(warmup)` this is T5's `1/sqrt(max(step, warmup))`.
    InverseSqrt {
        peak: f64,
        warmup: u64,
    },
    Constant {
        lr: f64,
    },
}

impl Schedule {
    /// The rate for step `step` (1-based).
    pub fn lr(&self, step: u64) -> f64 {
        match *self {
            Schedule::InverseSqrt { peak, warmup } => {
                peak * (warmup.max(1) as f64 / step.max(warmup).max(1) as f64).sqrt()
            }
            Schedule::Constant { lr } => lr,
        }
    }
}

/// Per-parameter state, by parameter name.
pub struct Optimizer {
    pub kind: OptimizerKind,
    /// Steps taken so far.
    pub step: u64,
    /// Adafactor: scale each step by the parameter's RMS (pretraining); off for
    /// finetuning at a fixed rate, as the paper's finetuning code runs it.
    pub scale_parameter: bool,
    state: BTreeMap<String, Vec<Tensor>>,
}

const EPS1: f64 = 1e-30;
const EPS2: f64 = 1e-3;
const CLIP_THRESHOLD: f64 = 1.0;
const DECAY: f64 = -0.8;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
const WEIGHT_DECAY: f64 = 0.01;

fn rms(t: &Tensor) -> Tensor {
    t.pow_tensor_scalar(2).mean(Kind::Float).sqrt()
}

impl Optimizer {
    pub fn new(kind: OptimizerKind) -> Optimizer {
        Optimizer {
            kind,
            step: 0,
            scale_parameter: true,
            state: BTreeMap::new(),
        }
    }

    /// Applies one update with rate `lr` to every parameter that has a gradient.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        self.step += 1;
        let step = self.step as f64;
        tch::no_grad(|| {
            for (name, p) in params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let state = self
                    .state
                    .entry(name.clone())
                    .or_insert_with(|| fresh_state(self.kind, p));
                match self.kind {
                    OptimizerKind::Adafactor => {
                        adafactor(p, &g, state, step, lr, self.scale_parameter)
                    }
                    OptimizerKind::Adamw => adamw(p, &g, state, step, lr),
                }
            }
        });
    }

    /// The state as named tensors, for a safetensors file.
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        self.state
            .iter()
            .flat_map(|(name, tensors)| {
                tensors
                    .iter()
                    .enumerate()
                    .map(move |(i, t)| (format!("{name}#{i}"), t.to_device(tch::Device::Cpu)))
            })
            .collect()
    }

    /// The state's tensors in a fixed order (by parameter name), with their names.
    pub fn state_tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.state
            .iter()
            .flat_map(|(name, v)| v.iter().map(move |t| (name.as_str(), t)))
    }

    /// Restores state written by [`named_state`](Self::named_state).
    pub fn load_state(
        &mut self,
        step: u64,
        named: Vec<(String, Tensor)>,
        device: tch::Device,
    ) -> Result<(), String> {
        let mut state: BTreeMap<String, Vec<(usize, Tensor)>> = BTreeMap::new();
        for (key, t) in named {
            let (name, i) = key
                .rsplit_once('#')
                .and_then(|(n, i)| Some((n.to_string(), i.parse::<usize>().ok()?)))
                .ok_or_else(|| format!("optimizer state entry `{key}` is malformed"))?;
            state
                .entry(name)
                .or_default()
                .push((i, t.to_device(device)));
        }
        self.state = state
            .into_iter()
            .map(|(name, mut v)| {
                v.sort_by_key(|(i, _)| *i);
                (name, v.into_iter().map(|(_, t)| t).collect())
            })
            .collect();
        self.step = step;
        Ok(())
    }
}

fn factored(p: &Tensor) -> bool {
    p.dim() >= 2
}

fn fresh_state(kind: OptimizerKind, p: &Tensor) -> Vec<Tensor> {
    let opts = (Kind::Float, p.device());
    match kind {
        OptimizerKind::Adafactor if factored(p) => {
            let size = p.size();
            let rows = &size[..size.len() - 1];
            let mut cols = size[..size.len() - 2].to_vec();
            cols.push(size[size.len() - 1]);
            vec![Tensor::zeros(rows, opts), Tensor::zeros(&cols[..], opts)]
        }
        OptimizerKind::Adafactor => vec![Tensor::zeros(p.size(), opts)],
        OptimizerKind::Adamw => vec![Tensor::zeros(p.size(), opts), Tensor::zeros(p.size(), opts)],
    }
}

fn adafactor(
    p: &Tensor,
    g: &Tensor,
    state: &mut [Tensor],
    step: f64,
    lr: f64,
    scale_parameter: bool,
) {
    let mut p = p.shallow_clone();
    let g = g.to_kind(Kind::Float);
    let beta2 = 1.0 - step.powf(DECAY);
    let sq = g.pow_tensor_scalar(2) + EPS1;
    let mut update = if let [row, col] = state {
        let _ = row
            .g_mul_scalar_(beta2)
            .g_add_(&(sq.mean_dim(-1, false, Kind::Float) * (1.0 - beta2)));
        let _ = col
            .g_mul_scalar_(beta2)
            .g_add_(&(sq.mean_dim(-2, false, Kind::Float) * (1.0 - beta2)));
        let r = (&*row / row.mean_dim(-1, true, Kind::Float))
            .rsqrt()
            .unsqueeze(-1);
        let c = col.unsqueeze(-2).rsqrt();
        r * c * &g
    } else {
        let v = &mut state[0];
        let _ = v.g_mul_scalar_(beta2).g_add_(&(sq * (1.0 - beta2)));
        v.rsqrt() * &g
    };
    update = &update / (rms(&update) / CLIP_THRESHOLD).clamp_min(1.0);
    let scale = if scale_parameter {
        rms(&p).clamp_min(EPS2) * lr
    } else {
        Tensor::from(lr)
    };
    let _ = p.g_sub_(&(update * scale));
}

fn adamw(p: &Tensor, g: &Tensor, state: &mut [Tensor], step: f64, lr: f64) {
    let mut p = p.shallow_clone();
    let g = g.to_kind(Kind::Float);
    if let [m, v] = state {
        let _ = m.g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
        let _ = v
            .g_mul_scalar_(BETA2)
            .g_add_(&(g.pow_tensor_scalar(2) * (1.0 - BETA2)));
        let m_hat = &*m / (1.0 - BETA1.powf(step));
        let v_hat = &*v / (1.0 - BETA2.powf(step));
        if p.dim() >= 2 {
            let _ = p.g_mul_scalar_(1.0 - lr * WEIGHT_DECAY);
        }
        let _ = p.g_sub_(&(m_hat / (v_hat.sqrt() + ADAM_EPS) * lr));
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm` (when positive);
/// returns the norm before clipping.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float))
            .collect();
        let total = Tensor::stack(&norms, 0)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[]);
        if max_norm > 0.0 && total > max_norm {
            let factor = max_norm / (total + 1e-6);
            for g in &grads {
                let _ = g.shallow_clone().g_mul_scalar_(factor);
            }
        }
        total
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_sqrt_is_t5s_schedule() {
        let s = Schedule::InverseSqrt {
            peak: 1.0 / (10_000f64).sqrt(),
            warmup: 10_000,
        };
        assert_eq!(s.lr(1), 0.01);
        assert_eq!(s.lr(10_000), 0.01);
        assert!((s.lr(40_000) - 1.0 / 200.0).abs() < 1e-12);
    }

    #[test]
    fn adafactor_moves_against_the_gradient_and_state_round_trips() {
        tch::manual_seed(0);
        let p = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let params = vec![("w".to_string(), p.shallow_clone())];
        let loss = (&p * &p).sum(Kind::Float);
        loss.backward();
        let before = p.detach().copy();
        let mut opt = Optimizer::new(OptimizerKind::Adafactor);
        opt.step(&params, 0.01);
        // d(sum p^2)/dp = 2p: every entry shrinks in magnitude.
        let after = p.detach();
        assert!(bool::try_from((after.abs() - before.abs()).lt(0.0).all()).unwrap());
        let state = opt.named_state();
        assert_eq!(state.len(), 2, "factored: row and column statistics");
        assert_eq!(state[0].1.size(), vec![4]);
        assert_eq!(state[1].1.size(), vec![3]);
        let mut other = Optimizer::new(OptimizerKind::Adafactor);
        other.load_state(1, state, tch::Device::Cpu).unwrap();
        assert_eq!(other.named_state().len(), 2);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let p = Tensor::ones([10], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * 3.0).sum(Kind::Float).backward();
        let params = vec![("p".to_string(), p.shallow_clone())];
        let norm = clip_grad_norm(&params, 1.0);
        assert!((norm - 3.0 * 10f64.sqrt()).abs() < 1e-5);
        let after = p
            .grad()
            .pow_tensor_scalar(2)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[]);
        assert!((after - 1.0).abs() < 1e-4);
    }
}
