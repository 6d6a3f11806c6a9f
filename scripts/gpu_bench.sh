#!/usr/bin/env bash
# T5-base pretraining throughput on a GPU host that has PyTorch 2.11 but no Rust toolchain:
# ehrprep's `t5-bench` driver (built here, stripped, carried there) against transformers,
# same config, batch 64 x 512 inputs / 114 targets, bf16, in the same run.
#
#   cargo build --workspace && strip -o gpu/t5-bench "$CARGO_TARGET_DIR/debug/t5-bench"
#   (on the GPU host, from the repository root) scripts/gpu_bench.sh gpu/t5-bench
set -euo pipefail
driver=$1
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 scripts/bench_train.py --driver "$driver" --model t5-base --batch 64 --inputs 512 \
    --targets 114 --steps 10 --warmup 3 --device cuda
