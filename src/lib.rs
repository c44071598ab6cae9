//! adjq: a declarative, cached, resumable pipeline runner for quantization research.
//!
//! Modules, one job each: `manifest` (TOML → validated stages), `graph` (the DAG),
//! `store` (content-addressed artifacts and records), `exec` (planning, scheduling,
//! child-process stage execution, resume), `stages` (stage kinds), `sweep` (grids),
//! `history` (comparing logged runs), `data` (datasets, decoding, preprocessing and batch loading), `ckpt` (TensorFlow,
//! PyTorch and safetensors checkpoints into one tensor map), `model` (EfficientNet),
//! `quant` (fake quant, the adjustable quantizer, the quantized network), `score` (the
//! differentiable metric and the official MicroNet counter), `backend` (CPU/GPU choice),
//! `malloc` (the allocator kept from unmapping freed activations).

pub mod artifacts;
pub mod atomic;
pub mod backend;
pub mod ckpt;
pub mod cli;
pub mod data;
pub mod exec;
pub mod graph;
pub mod history;
#[cfg(test)]
mod layers;
pub mod malloc;
pub mod manifest;
pub mod model;
pub mod predict;
pub mod quant;
pub mod report;
pub mod score;
pub mod stages;
pub mod store;
pub mod sweep;
pub mod train;
