//! adjq: pipeline runner for quantization research.

/// Datasets, decoding, preprocessing and batch loading.
pub mod data;
