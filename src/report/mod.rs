//! Reports: TensorBoard event files for training curves (plots and report pages follow).

pub mod tensorboard;
