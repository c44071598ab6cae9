//! A tiny deterministic RNG (SplitMix64). Streams are derived from explicit keys
//! (seed, epoch, record index, purpose), so results never depend on thread scheduling.

/// What a random stream is used for; keeps streams with equal keys apart.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    ShardOrder = 1,
    ShuffleBuffer = 2,
    Augment = 3,
}

#[derive(Clone, Debug)]
pub struct Rng(u64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A stream keyed by `seed`, `purpose`, `epoch` and `index`.
    pub fn keyed(seed: u64, purpose: Purpose, epoch: u64, index: u64) -> Self {
        let mut s = mix(seed ^ GOLDEN);
        for k in [purpose as u64, epoch, index] {
            s = mix(s.wrapping_add(GOLDEN) ^ mix(k));
        }
        Rng(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in 0..n (n > 0); multiply-shift, bias is negligible for our n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_streams() {
        let a = Rng::keyed(1, Purpose::Augment, 0, 5).next_u64();
        assert_eq!(a, Rng::keyed(1, Purpose::Augment, 0, 5).next_u64());
        assert_ne!(a, Rng::keyed(1, Purpose::Augment, 0, 6).next_u64());
        assert_ne!(a, Rng::keyed(1, Purpose::Augment, 1, 5).next_u64());
        assert_ne!(a, Rng::keyed(2, Purpose::Augment, 0, 5).next_u64());
        assert_ne!(a, Rng::keyed(1, Purpose::ShuffleBuffer, 0, 5).next_u64());
    }

    #[test]
    fn below_and_uniform_stay_in_range() {
        let mut r = Rng::keyed(0, Purpose::Augment, 0, 0);
        for n in 1..50 {
            assert!(r.below(n) < n);
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
