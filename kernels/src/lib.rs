//! The CPU loops of adjq's own ops, on plain slices: the depthwise convolution and swish.
//! The burn side (extension ops, autodiff nodes, tests against burn's own ops) is in
//! `adjq::model`; this crate is apart so that debug and test builds can optimize it.

pub mod depthwise;
pub mod swish;
