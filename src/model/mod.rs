//! Models: the EfficientNet family (config, layers, network) in burn.

pub mod config;
pub mod depthwise;
pub mod efficientnet;
pub mod flex_io;
pub mod import;
pub mod layers;
pub mod names;
pub mod pointwise;
pub mod swish;
#[cfg(test)]
pub mod testing;
pub mod timm;

pub use config::{Activation, EfficientNetConfig};
pub use efficientnet::{EfficientNet, MbConv};
pub use layers::ConvBn;
