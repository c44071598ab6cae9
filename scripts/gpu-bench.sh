#!/usr/bin/env bash
# Every GPU measurement issue 14 asks for, in one call on a lent GPU machine (no Rust and
# no internet there; PyTorch with CUDA is). Prepare here, once:
#
#   scripts/gpu-bench.sh --prepare     # builds target/gpu/ (wgpu binaries) and .gl/ (Vulkan loader debs)
#
# then run on the device with `carry: ["target/gpu", ".gl"]`:
#
#   scripts/gpu-bench.sh --run         # results under $OUT (or /tmp/gpu-bench)
#
# It measures, in this order: the adjq step (B0 @ 224, batch 25) on wgpu, cold (fresh
# kernel caches) and warm (a second process on the same machine, the caches on disk),
# with the first step's time of each; PyTorch eager CUDA on the same step; the data
# loader alone on 16 workers; the demo pipeline with --backend wgpu.
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
  export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
  mkdir -p target/gpu
  cargo build --release --locked --features wgpu --bin runner
  cargo bench --locked --features wgpu --no-run --bench adjq_step --bench data_pipeline \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do cp "$exe" "target/gpu/$name"; done
  cp target/release/runner target/gpu/runner
  # The Vulkan loader and libglvnd, which the device image lacks (device README).
  grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >>.git/info/exclude
  mkdir -p .gl /tmp/amd64/partial
  local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  ls -la target/gpu .gl
}

run() {
  local out="${OUT:-/tmp/gpu-bench}"
  mkdir -p "$out"
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  # CubeCL persists autotune results under the outermost Cargo project's target/environment,
  # else the user cache dir ($XDG_CACHE_HOME/cubecl): both emptied, the cold case.
  export XDG_CACHE_HOME=/tmp/xdg-cache
  rm -rf target/environment "$XDG_CACHE_HOME"
  {
    echo "== adjq step, wgpu, cold (no kernel caches)"
    time target/gpu/adjq_step --bench wgpu
    echo "== adjq step, wgpu, warm (a new process, caches from the cold run)"
    time target/gpu/adjq_step --bench wgpu
    echo "== adjq step, PyTorch eager CUDA"
    python3 benches/torch_adjq_step.py --device cuda
    echo "== data loader alone, 16 workers, 224 (images/s)"
    python3 benches/make_bench_jpegs.py /tmp/bench_jpegs 600
    target/gpu/data_pipeline --bench /tmp/bench_jpegs 16 5
    echo "== demo pipeline, --backend wgpu"
    time target/gpu/runner --backend wgpu --store /tmp/gpu-store run pipelines/demo.toml
  } 2>&1 | tee "$out/log.txt"
}

case "${1:-}" in
  --prepare) prepare ;;
  --run) run ;;
  *) echo "usage: $0 --prepare | --run" >&2; exit 2 ;;
esac
