//! Reports: TensorBoard event files for training curves, charts (PNG and SVG) and report
//! pages (Markdown and self-contained HTML).

pub mod page;
pub mod plots;
pub mod tensorboard;
