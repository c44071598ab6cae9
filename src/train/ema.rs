//! Exponential moving average of a model's values (TF EfficientNet trains with one and
//! evaluates its shadow weights): shadow = decay·shadow + (1 − decay)·value after each step.

use crate::ckpt::{Tensor as CkptTensor, TensorMap};
use anyhow::{Result, bail};

pub struct Ema {
    pub decay: f64,
    shadow: Option<TensorMap>,
}

impl Ema {
    pub fn new(decay: f64) -> Ema {
        Ema {
            decay,
            shadow: None,
        }
    }

    /// Resumes with a saved shadow.
    pub fn with_shadow(decay: f64, shadow: TensorMap) -> Ema {
        Ema {
            decay,
            shadow: Some(shadow),
        }
    }

    pub fn update(&mut self, current: &TensorMap) -> Result<()> {
        let Some(shadow) = &mut self.shadow else {
            self.shadow = Some(current.clone());
            return Ok(());
        };
        let d = self.decay as f32;
        for (name, t) in current {
            let Some(s) = shadow.get_mut(name) else {
                bail!("EMA: `{name}` appeared after the first step");
            };
            let mixed: Vec<f32> = s
                .to_f32_vec()?
                .iter()
                .zip(t.to_f32_vec()?)
                .map(|(a, b)| d * a + (1.0 - d) * b)
                .collect();
            *s = CkptTensor::from_f32(t.shape.clone(), &mixed);
        }
        Ok(())
    }

    pub fn shadow(&self) -> Option<&TensorMap> {
        self.shadow.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_follows_the_recurrence() {
        let map = |v: f32| -> TensorMap {
            [("w".to_string(), CkptTensor::from_f32(vec![2], &[v, -v]))]
                .into_iter()
                .collect()
        };
        let mut e = Ema::new(0.9);
        e.update(&map(1.0)).unwrap();
        e.update(&map(2.0)).unwrap();
        e.update(&map(4.0)).unwrap();
        // 1 → 0.9·1 + 0.1·2 = 1.1 → 0.9·1.1 + 0.1·4 = 1.39
        let got = e.shadow().unwrap()["w"].to_f32_vec().unwrap();
        assert!(
            (got[0] - 1.39).abs() < 1e-6 && (got[1] + 1.39).abs() < 1e-6,
            "{got:?}"
        );
    }
}
