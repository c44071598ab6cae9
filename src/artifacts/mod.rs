//! Artifact formats stages hand each other, one type and one reader/writer each.

pub mod model_dir;
