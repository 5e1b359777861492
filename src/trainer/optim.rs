//! AdamW (PyTorch's single-tensor algorithm, written out so every step is explicit and seeded runs
//! stay bit-reproducible), linear warm-up and global-norm gradient clipping.

use super::Result;
use tch::Tensor;

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW state over a fixed list of parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i32,
}

impl AdamW {
    /// Optimizer over `params` (each must require gradients).
    pub fn new(params: Vec<Tensor>, cfg: AdamWConfig) -> Self {
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        AdamW { cfg, params, m, v, step: 0 }
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for p in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> Result<f64> {
        let norm = tch::no_grad(|| -> Result<f64> {
            let sq: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.grad())
                .filter(|g| g.defined())
                .map(|g| g.square().sum(g.kind()))
                .collect();
            if sq.is_empty() {
                return Ok(0.0);
            }
            let total = f64::try_from(Tensor::stack(&sq, 0).sum(tch::Kind::Float).sqrt())?;
            let coef = max / (total + 1e-6);
            if coef < 1.0 {
                for p in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.f_mul_scalar_(coef)?;
                    }
                }
            }
            Ok(total)
        })?;
        Ok(norm)
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step);
        let bc2 = 1.0 - c.beta2.powi(self.step);
        tch::no_grad(|| -> Result<()> {
            for ((p, m), v) in self.params.iter_mut().zip(self.m.iter_mut()).zip(self.v.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                if c.weight_decay != 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
                }
                let _ = m.f_mul_scalar_(c.beta1)?.f_add_(&(&g * (1.0 - c.beta1)))?;
                let _ = v.f_mul_scalar_(c.beta2)?.f_add_(&(g.square() * (1.0 - c.beta2)))?;
                let denom = v.sqrt() / bc2.sqrt() + c.eps;
                let _ = p.f_sub_(&(&*m / denom * (lr / bc1)))?;
            }
            Ok(())
        })
    }
}

/// Learning rate at 0-based `step`: linear warm-up over `warmup` steps, then constant.
pub fn warmup_lr(base: f64, step: u32, warmup: u32) -> f64 {
    if step < warmup { base * f64::from(step + 1) / f64::from(warmup) } else { base }
}
