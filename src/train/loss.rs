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

/// The number of values in a terms tensor: `[total, distill, cross_entropy, metric, sign]`.
pub const TERMS: usize = 5;

impl LossTerms {
    /// The terms from the values of a terms tensor, in its order.
    pub fn from_values(v: [f32; TERMS]) -> Self {
        let [total, distill, cross_entropy, metric, sign] = v;
        LossTerms {
            total,
            distill,
            cross_entropy,
            metric,
            sign,
        }
    }
}

/// loss = distill + α·CE + sign·β·metric, sign = +1 while metric > target, else −1.
///
/// Returns the loss and its terms as a detached tensor of [`TERMS`] values on the inner
/// (non-autodiff) device, `[total, distill, cross_entropy, metric, sign]`. The sign is
/// picked on the device: reading the metric back to pick it would sync the device (a GPU
/// stall) every step.
pub fn adjq_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: Tensor<1, Int>,
    metric: Tensor<1>,
    alpha: f32,
    beta: f32,
    target: f32,
) -> (Tensor<1>, Tensor<1>) {
    let distill = distillation(student.clone(), teacher);
    let ce = cross_entropy(student, labels, 0.0);
    // Exactly ±1 (2·1 − 1, 2·0 − 1), so sign·β is exactly ±β, as the host constant it
    // replaces; a constant for autodiff, as that was.
    let sign = metric
        .clone()
        .inner()
        .greater_scalar(target)
        .float()
        .mul_scalar(2.0)
        .sub_scalar(1.0);
    let signed_beta = Tensor::from_inner(sign.clone().mul_scalar(beta));
    let total = distill.clone() + ce.clone().mul_scalar(alpha) + metric.clone() * signed_beta;
    let terms = Tensor::cat(
        vec![
            total.clone().inner(),
            distill.inner(),
            ce.inner(),
            metric.inner(),
            sign,
        ],
        0,
    );
    (total, terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device sign and total equal the host rule they replace (sign = +1 iff
    /// metric > target; total = distill + ce·α + metric·(sign·β)) bit for bit, on both
    /// sides of the target and exactly at it.
    #[test]
    fn the_device_sign_and_total_equal_the_host_rule() {
        let d = Device::flex().autodiff();
        let s = Tensor::<2>::from_floats([[1.0, 2.5, -3.0], [0.3, 0.0, 0.7]], &d);
        let t = Tensor::<2>::from_floats([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], &d);
        let y = Tensor::<1, Int>::from_ints([2, 0], &d);
        let (alpha, beta, target) = (7.0f32, 85.0f32, 0.18f32);
        let host = |t: Tensor<1>| t.into_scalar::<f32>();
        let distill = host(distillation(s.clone(), t.clone()));
        let ce = host(cross_entropy(s.clone(), y.clone(), 0.0));
        let below = f32::from_bits(target.to_bits() - 1);
        let above = f32::from_bits(target.to_bits() + 1);
        for (m, sign) in [
            (0.5f32, 1.0f32),
            (above, 1.0),
            (target, -1.0),
            (below, -1.0),
            (0.01, -1.0),
        ] {
            let metric = Tensor::<1>::from_floats([m], &d);
            let (total, terms) =
                adjq_loss(s.clone(), t.clone(), y.clone(), metric, alpha, beta, target);
            let v = crate::quant::host_f32(terms);
            let terms = LossTerms::from_values(v.try_into().expect("five terms"));
            assert_eq!(terms.sign, sign, "metric {m} against target {target}");
            assert_eq!(terms.sign, if m > target { 1.0 } else { -1.0 });
            let expected = distill + ce * alpha + m * (sign * beta);
            // The expression this function evaluated with the sign a host constant.
            let before = host(
                distillation(s.clone(), t.clone())
                    + cross_entropy(s.clone(), y.clone(), 0.0).mul_scalar(alpha)
                    + Tensor::<1>::from_floats([m], &d).mul_scalar(sign * beta),
            );
            let total = host(total);
            assert_eq!(total.to_bits(), expected.to_bits(), "{total} vs {expected}");
            assert_eq!(total.to_bits(), before.to_bits(), "{total} vs {before}");
            assert_eq!(terms.total.to_bits(), expected.to_bits());
            assert_eq!(
                (terms.distill, terms.cross_entropy, terms.metric),
                (distill, ce, m)
            );
        }
    }

    /// The metric term's gradient is sign·β, and the sign itself carries none.
    #[test]
    fn the_metric_gradient_is_the_signed_beta() {
        let d = Device::flex().autodiff();
        let s = Tensor::<2>::from_floats([[1.0, 2.0]], &d);
        let y = Tensor::<1, Int>::from_ints([1], &d);
        for (m, g) in [(0.5f32, 3.0f32), (0.1, -3.0)] {
            let metric = Tensor::<1>::from_floats([m], &d).require_grad();
            let (total, _) = adjq_loss(
                s.clone(),
                s.clone(),
                y.clone(),
                metric.clone(),
                2.0,
                3.0,
                0.18,
            );
            let grads = total.backward();
            let grad = metric.grad(&grads).expect("metric gradient");
            assert_eq!(grad.into_scalar::<f32>(), g);
        }
    }
}
