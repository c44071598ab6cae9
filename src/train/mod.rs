//! Training: losses, learning-rate and precision schedules, SWA, parameter bookkeeping
//! (stable ids, optimizer groups, snapshots), TF1's Adam and the adjustable-quantization
//! trainer.

pub mod adjq;
pub mod ema;
pub mod loss;
pub mod params;
pub mod schedule;
pub mod swa;
pub mod tf_adam;
