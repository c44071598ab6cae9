//! adjq: pipeline runner for quantization research.
