//! Schedules of the adjq trainer (DESIGN §3): learning rate with optional decay and Adam
//! restarts, which mini-epochs train precision, when SWA records a snapshot.

use serde::{Deserialize, Serialize};

/// Mini-epochs per epoch.
pub const MINI_EPOCHS: usize = 10;

/// Fixed lr, or lr·exp(−step·decay)·|cos(π·d/(4·R))| + 1e-7 with the optimizer state
/// reset every R steps (d counts steps since the reset).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub lr: f64,
    /// (decay, R); `None` = fixed.
    pub decay: Option<(f64, usize)>,
}

impl LrSchedule {
    /// The learning rate of `step` and whether the optimizer state is reset before it.
    pub fn at(&self, step: usize) -> (f64, bool) {
        match self.decay {
            None => (self.lr, false),
            Some((decay, reset)) => {
                let r = reset.max(1);
                let d = step % r;
                let lr = self.lr
                    * (-(step as f64) * decay).exp()
                    * (std::f64::consts::PI * d as f64 / (4.0 * r as f64))
                        .cos()
                        .abs()
                    + 1e-7;
                (lr, d == 0 && step > 0)
            }
        }
    }
}

/// When precision (the bit scales) is trained.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrecisionSchedule {
    /// Finetune mode: bits frozen throughout.
    pub finetune: bool,
    /// No precision training before this many epochs.
    pub warm_up_epoch: f64,
    /// Iterative training: precision only every `freq`-th mini-epoch.
    pub iterative: bool,
    pub freq: usize,
}

impl PrecisionSchedule {
    /// Whether mini-epoch `k` (0..10) of epoch `epoch` trains precision.
    pub fn trains_precision(&self, epoch: usize, k: usize) -> bool {
        !self.finetune
            && epoch as f64 + k as f64 / MINI_EPOCHS as f64 >= self.warm_up_epoch
            && (!self.iterative || k.is_multiple_of(self.freq.max(1)))
    }
}

/// Stochastic weight averaging: after mini-epoch k of epoch e, record when
/// e + k/10 ≥ delay, k > 0 and k % int(10·freq) == 0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwaSchedule {
    pub delay: f64,
    pub freq: f64,
}

impl SwaSchedule {
    pub fn records_after(&self, epoch: usize, k: usize) -> bool {
        let every = ((MINI_EPOCHS as f64 * self.freq) as usize).max(1);
        epoch as f64 + k as f64 / MINI_EPOCHS as f64 >= self.delay
            && k > 0
            && k.is_multiple_of(every)
    }
}
