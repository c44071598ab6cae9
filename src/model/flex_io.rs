//! Inputs and outputs of our own ops on the CPU backend (`model::{swish, depthwise,
//! pointwise}`, `quant::fused`): f32 views of their inputs and fresh output tensors.
//!
//! Why our own outputs: burn-flex's `FlexTensor::empty` zero-fills a byte vector and then
//! copies it whole into a 16-byte-aligned one (its `Bytes::from_bytes_vec` cannot see the
//! vector's real alignment); on the B0 training step that zeroing, copying and their page
//! faults took a sixth of the time. Ours are allocated uninitialized and each piece is
//! written (or zeroed, right before its kernel fills it, while it is in cache) by the op;
//! the f32 vector is then moved into the tensor, not copied.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};
use std::mem::MaybeUninit;

/// `t` contiguous (a copy only if it is not); `op` names the op in the message of a
/// wrong dtype, which would be a bug in the op's dispatch.
pub fn contiguous_f32(t: &FlexTensor, op: &str) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "the {op} op takes f32 tensors");
    t.to_contiguous()
}

/// The elements of a contiguous f32 tensor.
pub fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// A new f32 tensor of `shape` whose elements `fill` writes; it gets them uninitialized.
///
/// # Safety
/// `fill` must initialize every element (by [`zeroed`] pieces and kernels that write
/// theirs, or kernels documented to write every element).
pub unsafe fn output(shape: &[usize], fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> FlexTensor {
    let len = shape.iter().product();
    let mut values: Vec<f32> = Vec::with_capacity(len);
    fill(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: the caller's contract: `fill` initialized all `len` elements.
    unsafe { values.set_len(len) };
    from_vec(values, shape)
}

/// A piece of an [`output`] set to zeros, as initialized f32s (done in the op's parallel
/// loop, so each piece is zeroed while in cache right before its kernel overwrites it).
pub fn zeroed(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    piece.iter_mut().for_each(|v| {
        v.write(0.0);
    });
    // SAFETY: every element was written just above.
    unsafe { piece.assume_init_mut() }
}

/// `values` as a tensor of `shape`, without a copy.
pub fn from_vec(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// The dims of a tensor, as a vector to hand to [`output`].
pub fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_moved_in_and_read_back_as_written() {
        // SAFETY: every element is written.
        let t = unsafe {
            output(&[2, 3], |v| {
                let v = zeroed(v);
                assert!(v.iter().all(|&x| x == 0.0));
                v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            })
        };
        assert_eq!(dims(&t), [2, 3]);
        assert_eq!(f32s(&t), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let c = contiguous_f32(&t, "test");
        assert_eq!(f32s(&c), f32s(&t));
    }
}
