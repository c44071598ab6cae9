//! The adjq loss (DESIGN §3): distillation to the float teacher's logits, cross entropy,
//! and the signed metric term.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// 0.01 · mean over the batch of Σ_k sqrt((z_q,k − z_f,k)² + 1e-5).
pub fn distillation(student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
    let d = student - teacher;
    (d.clone() * d)
        .add_scalar(1e-5)
        .sqrt()
        .sum_dim(1)
        .mean()
        .mul_scalar(0.01)
}

/// Mean cross entropy of `logits` against class indices, with label smoothing ε
/// (targets 1 − ε + ε/K on the label, ε/K elsewhere).
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>, smoothing: f32) -> Tensor<1> {
    let [n, k] = logits.dims();
    let logp = log_softmax(logits, 1);
    let onehot = labels.one_hot::<2>(k).float();
    let target = onehot
        .mul_scalar(1.0 - smoothing)
        .add_scalar(smoothing / k as f32);
    (logp * target).sum().div_scalar(n as f32).neg()
}

/// The terms of one step's loss, as numbers for logs and curves.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossTerms {
    pub total: f32,
    pub distill: f32,
    pub cross_entropy: f32,
    pub metric: f32,
    /// +1 while the metric is above the target, −1 below.
    pub sign: f32,
}

/// loss = distill + α·CE + sign·β·metric, sign = +1 while metric > target, else −1.
pub fn adjq_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: Tensor<1, Int>,
    metric: Tensor<1>,
    alpha: f32,
    beta: f32,
    target: f32,
) -> (Tensor<1>, LossTerms) {
    let distill = distillation(student.clone(), teacher);
    let ce = cross_entropy(student, labels, 0.0);
    let m = metric.clone().into_scalar::<f32>();
    let sign = if m > target { 1.0 } else { -1.0 };
    let total = distill.clone() + ce.clone().mul_scalar(alpha) + metric.mul_scalar(sign * beta);
    let terms = LossTerms {
        total: total.clone().into_scalar::<f32>(),
        distill: distill.into_scalar::<f32>(),
        cross_entropy: ce.into_scalar::<f32>(),
        metric: m,
        sign,
    };
    (total, terms)
}
