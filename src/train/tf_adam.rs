//! TF1's `tf.train.AdamOptimizer` with its defaults (β1 0.9, β2 0.999, ε 1e-8), the
//! optimizer the original trains with (`trainer.py:171-174`), update for update as TF's
//! `ApplyAdam` kernel computes it in float32:
//!
//! lr_t = lr·√(1 − β2^t)/(1 − β1^t), m += (g − m)·(1 − β1), v += (g² − v)·(1 − β2),
//! θ −= m·lr_t/(√v + ε), then β1^t ·= β1 and β2^t ·= β2.
//!
//! burn's Adam differs in ε (1e-5) and where ε enters (ε·√(1 − β2^t) inside the square
//! root's sum), and keeps a step count instead of TF's float32 powers. The powers live in
//! each parameter's state here (TF keeps one pair per optimizer): every parameter of a
//! group steps together, so they agree. Checked against real TF on
//! `tests/fixtures/tf/tf1_adam.json`.

use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::prelude::*;
use burn_pack::Scalar;

/// The optimizer's constants (TF1's defaults, [`TfAdam::default`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TfAdam {
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
}

impl Default for TfAdam {
    fn default() -> Self {
        TfAdam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }
}

impl TfAdam {
    /// A whole-module optimizer (what `ModuleOptimizer::step` drives).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// One parameter's slots and the powers of β its next step uses.
#[derive(Clone)]
pub struct TfAdamState<const D: usize> {
    pub m: Tensor<D>,
    pub v: Tensor<D>,
    pub beta1_power: f32,
    pub beta2_power: f32,
}

impl Optimizer for TfAdam {
    type State<const D: usize> = TfAdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        // TF's slots start at zero and its powers at β (`_create_slots`).
        let (m, v, b1p, b2p) = match state {
            Some(s) => (s.m, s.v, s.beta1_power, s.beta2_power),
            None => (grad.zeros_like(), grad.zeros_like(), self.beta1, self.beta2),
        };
        // All in f32, in the kernel's order; the lr is fed to TF as a float32 placeholder.
        let lr_t = lr as f32 * (1.0 - b2p).sqrt() / (1.0 - b1p);
        let m = m.clone() + (grad.clone() - m).mul_scalar(1.0 - self.beta1);
        let v = v.clone() + (grad.clone() * grad - v).mul_scalar(1.0 - self.beta2);
        let update = m.clone().mul_scalar(lr_t) / v.clone().sqrt().add_scalar(self.epsilon);
        let state = TfAdamState {
            m,
            v,
            beta1_power: b1p * self.beta1,
            beta2_power: b2p * self.beta2,
        };
        (tensor - update, Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.m = state.m.to_device(device);
        state.v = state.v.to_device(device);
        state
    }
}

// By hand: burn's `#[derive(RecordState)]` only works inside burn-optim.
impl<const D: usize> RecordState for TfAdamState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "m", self.m.to_data());
        out.push_tensor(prefix, "v", self.v.to_data());
        out.push_scalar(prefix, "beta1_power", Scalar::from(self.beta1_power));
        out.push_scalar(prefix, "beta2_power", Scalar::from(self.beta2_power));
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let power = |src: &mut StateSource, leaf: &str| -> Option<f32> {
            f32::try_from(src.take_scalar(prefix, leaf)?).ok()
        };
        Some(TfAdamState {
            beta1_power: power(src, "beta1_power")?,
            beta2_power: power(src, "beta2_power")?,
            m: Tensor::from_data(src.take_tensor(prefix, "m")?, device),
            v: Tensor::from_data(src.take_tensor(prefix, "v")?, device),
        })
    }
}
