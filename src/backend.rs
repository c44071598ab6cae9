//! Which burn backend runs the tensors: chosen per run (`--backend`), compiled in by
//! cargo features.
//!
//! `flex` (pure-Rust CPU, the fastest CPU backend that builds offline) is always there
//! and is the default. `wgpu` (GPU through Vulkan/Metal/DX12) needs `--features wgpu`.
//! burn 0.22's `cuda` backend is not offered: its build script downloads an LLVM bundle,
//! so it cannot be built on machines without internet (see README, "Backends").

use anyhow::Result;
use burn::prelude::Device;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn's pure-Rust CPU backend (always built).
    #[default]
    Flex,
    /// GPU through wgpu (Vulkan on Linux); needs a binary built with `--features wgpu`.
    Wgpu,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Wgpu => "wgpu",
        }
    }

    /// Whether tensors live on a GPU (stages then hold `gpu` slots).
    pub fn is_gpu(self) -> bool {
        self != Backend::Flex
    }

    /// The backends this binary was built with.
    pub fn available() -> Vec<Backend> {
        let mut v = vec![Backend::Flex];
        if cfg!(feature = "wgpu") {
            v.push(Backend::Wgpu);
        }
        v
    }

    /// The backends a benchmark was asked for: those named among its arguments (cargo's
    /// own flags, such as `--bench`, are skipped), or every backend built when none is.
    pub fn from_bench_args() -> Result<Vec<Backend>> {
        let names: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        if names.is_empty() {
            return Ok(Self::available());
        }
        names
            .iter()
            .map(|name| {
                let backend = <Backend as clap::ValueEnum>::from_str(name, true)
                    .map_err(|_| anyhow::anyhow!("unknown backend {name:?} (flex or wgpu)"))?;
                backend.device(None)?;
                Ok(backend)
            })
            .collect()
    }

    /// The (non-autodiff) device of this backend: GPU `index` (among the discrete GPUs),
    /// or the default device when `None`; or an error saying how to get it.
    pub fn device(self, index: Option<usize>) -> Result<Device> {
        match self {
            Backend::Flex => Ok(Device::flex()),
            Backend::Wgpu => wgpu_device(index),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(index: Option<usize>) -> Result<Device> {
    use burn::prelude::DeviceKind;
    Ok(Device::wgpu(match index {
        Some(i) => DeviceKind::DiscreteGpu(i),
        None => DeviceKind::DefaultDevice,
    }))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_: Option<usize>) -> Result<Device> {
    anyhow::bail!(
        "this runner was built without the wgpu backend; rebuild with \
         `cargo build --release --features wgpu` (or use --backend flex)"
    )
}
