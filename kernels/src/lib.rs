//! The CPU loops of adjq's own ops, on plain slices: the depthwise and 1×1 convolutions,
//! swish and the adjustable quantizer's step.
//! The burn side (extension ops, autodiff nodes, tests against burn's own ops) is in
//! `adjq::model` and `adjq::quant::fused`; this crate is apart so that debug and test builds can optimize it.

/// Defines each `fn name(args) = body;` twice: `avx2::name`, `body` compiled for AVX2
/// (eight f32 lanes per instruction), and `name`, which runs that copy where the CPU has
/// AVX2 and `body` elsewhere. Without fused multiply-adds both give the same bits.
macro_rules! with_avx2_copies {
    ($(
        fn $name:ident $(<$g:ident: $bound:path>)? ($($arg:ident: $ty:ty),* $(,)?)
            $(-> $ret:ty)? = $body:ident;
    )*) => {
        #[cfg(target_arch = "x86_64")]
        mod avx2 {
            use super::*;
            $(
                #[target_feature(enable = "avx2")]
                pub fn $name $(<$g: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
                    super::$body($($arg),*)
                }
            )*
        }
        $(
            fn $name $(<$g: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
                #[cfg(target_arch = "x86_64")]
                if crate::avx2() {
                    // SAFETY: the CPU has AVX2, checked just above.
                    return unsafe { avx2::$name($($arg),*) };
                }
                $body($($arg),*)
            }
        )*
    };
}

pub mod depthwise;
pub mod pointwise;
pub mod quant;
pub mod swish;

/// Whether this CPU runs the AVX2 copies of the loops (std caches the check).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// An output element the elementwise loops (swish, the quantizer) write exactly once,
/// never read: an `f32`, or an uninitialized one, so callers filling a fresh buffer need
/// not zero it first (that zeroing was 3% of a training step).
trait Slot {
    fn set(&mut self, v: f32);
}

impl Slot for f32 {
    #[inline(always)]
    fn set(&mut self, v: f32) {
        *self = v;
    }
}

impl Slot for std::mem::MaybeUninit<f32> {
    #[inline(always)]
    fn set(&mut self, v: f32) {
        self.write(v);
    }
}
