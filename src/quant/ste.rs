//! Straight-through rounding and clipping with the gradients the original defines:
//! a round passes the gradient unchanged; a clip passes it to its input only inside the
//! bounds (bounds included) and gives the bounds none.

use burn::prelude::*;

/// round(x) (half to even) forward, identity gradient.
pub fn round<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let xd = x.clone().detach();
    x + (xd.clone().round() - xd)
}

/// clip(x, lo, hi) with tensor bounds broadcastable to x; no gradient outside or to the bounds.
pub fn clip<const D: usize>(x: Tensor<D>, lo: Tensor<D>, hi: Tensor<D>) -> Tensor<D> {
    let xd = x.clone().detach();
    let clipped = xd.clone().max_pair(lo.detach()).min_pair(hi.detach());
    let outside = clipped.clone().not_equal(xd);
    x.mask_where(outside, clipped)
}

/// clip(x, lo, hi) with scalar bounds; no gradient outside.
pub fn clip_scalar<const D: usize>(x: Tensor<D>, lo: f32, hi: f32) -> Tensor<D> {
    let xd = x.clone().detach();
    let clipped = xd.clone().clamp(lo, hi);
    let outside = clipped.clone().not_equal(xd);
    x.mask_where(outside, clipped)
}

/// clip(x, lo, hi) differentiated as TF1's `clip_by_value` is (a Minimum then a Maximum
/// op): x inside the bounds (bounds included), `hi` the sum over the elements above it.
/// `lo` gets none (a constant wherever this is used).
pub fn clip_tf<const D: usize>(x: Tensor<D>, lo: Tensor<D>, hi: Tensor<D>) -> Tensor<D> {
    let above = x.clone().detach().greater(hi.clone().detach()).float();
    clip(x, lo, hi.clone()) + (hi.clone() - hi.detach()) * above
}
