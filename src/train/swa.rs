//! Stochastic weight averaging: the mean of recorded snapshots of every trainable value.

use crate::ckpt::{Tensor as CkptTensor, TensorMap};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Running sums (f64) of the recorded snapshots.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Swa {
    pub count: usize,
    sums: Vec<(String, Vec<usize>, Vec<f64>)>,
}

impl Swa {
    pub fn record(&mut self, snapshot: &TensorMap) -> Result<()> {
        if self.count == 0 {
            self.sums = snapshot
                .iter()
                .map(|(k, t)| Ok((k.clone(), t.shape.clone(), vec![0.0; t.numel()])))
                .collect::<Result<_>>()?;
        }
        if self.sums.len() != snapshot.len() {
            bail!(
                "SWA snapshot has {} tensors, expected {}",
                snapshot.len(),
                self.sums.len()
            );
        }
        for (name, _, sum) in &mut self.sums {
            let Some(t) = snapshot.get(name) else {
                bail!("SWA snapshot lacks `{name}`");
            };
            for (s, v) in sum.iter_mut().zip(t.to_f32_vec()?) {
                *s += v as f64;
            }
        }
        self.count += 1;
        Ok(())
    }

    /// The mean of the recorded snapshots (`None` when nothing was recorded).
    pub fn average(&self) -> Option<TensorMap> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        Some(
            self.sums
                .iter()
                .map(|(k, shape, sum)| {
                    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
                    (k.clone(), CkptTensor::from_f32(shape.clone(), &mean))
                })
                .collect(),
        )
    }
}
