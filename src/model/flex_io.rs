//! Inputs and outputs of our own ops on the CPU backend (`model::{swish, depthwise,
//! pointwise}`, `quant::fused`): f32 views of their inputs and fresh output tensors.
//!
//! Why our own outputs: burn-flex's `FlexTensor::empty` zero-fills a byte vector and then
//! copies it whole into a 16-byte-aligned one (its `Bytes::from_bytes_vec` cannot see the
//! vector's real alignment); on the B0 training step that zeroing, copying and their page
//! faults took a sixth of the time. An f32 vector handed over as `TensorData` is moved,
//! not copied.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};

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

/// A new f32 tensor of `shape` whose elements `fill` writes (it receives them zeroed).
pub fn output(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut values = vec![0f32; shape.iter().product()];
    fill(&mut values);
    from_vec(values, shape)
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
        let t = output(&[2, 3], |v| {
            assert!(v.iter().all(|&x| x == 0.0));
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        });
        assert_eq!(dims(&t), [2, 3]);
        assert_eq!(f32s(&t), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let c = contiguous_f32(&t, "test");
        assert_eq!(f32s(&c), f32s(&t));
    }
}
