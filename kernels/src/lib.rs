//! The CPU loops of adjq's own ops, on plain slices: the depthwise and 1×1 convolutions,
//! swish and the adjustable quantizer's step.
//! The burn side (extension ops, autodiff nodes, tests against burn's own ops) is in
//! `adjq::model` and `adjq::quant::fused`; this crate is apart so that debug and test builds can optimize it.

pub mod depthwise;
pub mod pointwise;
pub mod quant;
pub mod swish;

/// Whether this CPU runs the AVX2 copies of the loops (std caches the check).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}
