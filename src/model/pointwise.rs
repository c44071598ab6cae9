//! 1×1 convolutions as batched matrix products, on the CPU backend.
//!
//! Why: burn takes a conv's filter gradient as another conv, of the input by the output
//! gradient, with the batch as channels and the whole image as the kernel; for a 1×1 conv
//! that is a matrix-vector product per input channel over a copied input (a sixth of the
//! B0 training step). As y[n] = W·x[n] (x[n] as `[C_in, H·W]`), autodiff's matmul gives
//! ∂W = Σₙ g[n]·x[n]ᵀ and ∂x[n] = Wᵀ·g[n]: three GEMMs. Other backends keep burn's conv,
//! which stays the definition and the test reference.

use burn::prelude::*;
use burn::tensor::DType;

/// Whether a conv of `x` with `weight` at `stride` can go this way: a dense 1×1 filter at
/// stride 1 (no padding to speak of), f32 on the CPU backend.
pub fn supports(x: &Tensor<4>, weight: &Tensor<4>, stride: usize, groups: usize) -> bool {
    let [_, cin, kh, kw] = weight.dims();
    kh == 1
        && kw == 1
        && stride == 1
        && groups == 1
        && cin == x.dims()[1]
        && x.dtype() == DType::F32
        && x.device().inner() == Device::flex()
}

/// The 1×1 conv of `x` (`[N, C_in, H, W]`) by `weight` (`[C_out, C_in, 1, 1]`) plus
/// `bias` (`[C_out]`); callers check [`supports`] first.
pub fn conv(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [n, cin, h, w] = x.dims();
    let cout = weight.dims()[0];
    let y = weight
        .reshape([1, cout, cin])
        .matmul(x.reshape([n, cin, h * w]));
    let y = match bias {
        Some(b) => y + b.reshape([1, cout, 1]),
        None => y,
    };
    y.reshape([n, cout, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rel_diff, spread, values};
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    /// Forward and the gradients of x, W and b equal burn's conv2d's.
    #[test]
    fn equals_burn_s_conv_forward_and_every_gradient() {
        let device = Device::flex().autodiff();
        for (shape, cout, bias) in [
            ([2, 5, 7, 6], 3, true),
            ([3, 4, 1, 1], 6, true),
            ([1, 8, 4, 4], 8, false),
        ] {
            let cin = shape[1];
            let t = |v: Vec<f32>, dims: Vec<usize>| {
                Tensor::<4>::from_data(TensorData::new(v, dims), &device)
            };
            let run = |ours: bool| {
                let x = t(
                    spread(shape.iter().product(), 0.5, -1.0, 1.0),
                    shape.to_vec(),
                )
                .require_grad();
                let w = t(spread(cout * cin, 3.5, -1.0, 1.0), vec![cout, cin, 1, 1]).require_grad();
                let b = Tensor::<1>::from_data(
                    TensorData::new(spread(cout, 7.5, -1.0, 1.0), [cout]),
                    &device,
                )
                .require_grad();
                let b_used = bias.then(|| b.clone());
                let y = if ours {
                    assert!(supports(&x, &w, 1, 1));
                    conv(x.clone(), w.clone(), b_used)
                } else {
                    conv2d(
                        x.clone(),
                        w.clone(),
                        b_used,
                        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
                    )
                };
                let probe = t(
                    spread(y.dims().iter().product(), 9.25, -1.0, 1.0),
                    y.dims().to_vec(),
                );
                let grads = (y.clone() * probe).sum().backward();
                let mut out = vec![
                    values(y),
                    values(x.grad(&grads).unwrap()),
                    values(w.grad(&grads).unwrap()),
                ];
                if bias {
                    out.push(values(b.grad(&grads).unwrap()));
                }
                out
            };
            for (what, (a, b)) in ["y", "∂x", "∂W", "∂b"]
                .iter()
                .zip(run(true).iter().zip(&run(false)))
            {
                assert!(rel_diff(a, b) < 1e-5, "{shape:?}→{cout}: {what} differs");
            }
        }
    }
}
