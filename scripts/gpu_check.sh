#!/usr/bin/env bash
# Everything in ehrprep that touches a GPU, in one pass, for a CUDA host that has PyTorch 2.11
# and transformers but no Rust toolchain. The binaries are built on a development machine,
# stripped and gzipped into one folder:
#
#   cargo build --workspace && mkdir -p gpu && for f in ehrprep libehrprep_t5.so t5-bench; do
#       strip -o gpu/$f "$CARGO_TARGET_DIR/debug/$f" && gzip -f gpu/$f; done
#   (on the GPU host, from the repository root) scripts/gpu_check.sh gpu/ LOGDIR
#
# 1. the plugin loads and sees the device (`ehrprep plugins list`);
# 2. training step throughput, T5-base, batch 64 x 512 / 114, bf16, against transformers
#    (scripts/bench_train.py);
# 3. batched greedy and beam search against transformers `generate`, same checkpoint, outputs
#    compared (scripts/bench_generate.py);
# 4. the whole protocol in miniature on the device: fixtures/experiments/smoke.toml with every
#    stage on DEVICE (synth, build, pretrain, finetune on three tasks, evaluation, report);
# 5. pretraining through ehrprep's own data path (shards, span corruption at load time) on
#    that build (run it with 4), beside the bare step at the same shape, to see whether
#    loading keeps up;
# 6. a run stopped and resumed on the device against one run straight through (same losses
#    and weights?), and its checkpoint finetuned on the CPU;
# 7. the corpus build benchmark (scripts/bench_build.py, which needs pandas) on the host's
#    CPU cores, beside its single-threaded reference;
# 8. data-parallel pretraining on the device: `--nproc-per-node 1` (a process group of one,
#    the same collectives as many) with NCCL (auto on CUDA) and with Gloo, against section
#    6's straight run, and, where the host has two GPUs or more, two NCCL ranks of half the
#    batch against it too.
#
# DEVICE (default cuda) and SMALL=1 (tiny shapes) exist to try the script on a CPU first;
# ONLY="1 6" runs only those sections (section 6 makes a small build when 4 did not run).
set -uo pipefail
bins=$(realpath "$1")
logs=$(realpath "${2:-gpu-logs}")
device=${DEVICE:-cuda}
mkdir -p "$logs"
work=$(mktemp -d)
for f in ehrprep libehrprep_t5.so t5-bench; do
    gunzip -c "$bins/$f.gz" >"$work/$f" && chmod +x "$work/$f"
done
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EHRPREP_PLUGIN_PATH="$work/libehrprep_t5.so" PYTHONUNBUFFERED=1
ehrprep=$work/ehrprep

if [ "${SMALL:-0}" = 1 ]; then
    train=(--model t5-small --batch 2 --inputs 32 --targets 8 --steps 1 --warmup 1)
    generate=(--examples 8 --batch 4 --max-new 4 --beams 1,3)
    pretrain=(--model tiny --batch-size 4 --steps 3)
    notes=2000 steps=5 epochs=1 build_notes=(2000)
else
    train=(--model t5-base --batch 64 --inputs 512 --targets 114 --steps 10 --warmup 3)
    generate=(--examples 256 --batch 32 --max-new 32 --beams 1,3,5)
    pretrain=(--model t5-small --batch-size 64 --steps 60)
    notes=20000 steps=300 epochs= build_notes=(200000 1000000)
fi

section() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if want 1; then
section "1. plugin"
"$ehrprep" plugins list
fi

if want 2; then
section "2. training step, ${train[*]}"
timeout 120 python3 scripts/bench_train.py --driver "$work/t5-bench" "${train[@]}" --device "$device" ||
    echo "section 2 failed: $?"
fi

if want 3; then
section "3. generation, ${generate[*]}"
timeout 150 python3 scripts/bench_generate.py --driver "$work/t5-bench" "${generate[@]}" \
    --device "$device" --fill-ab || echo "section 3 failed: $?"
fi

db=$work/smoke/build/catalog.duckdb
sql() { "$ehrprep" sql --format csv --db "$db" "$1" || echo "query failed: $?"; }
if want 4; then
section "4. smoke experiment on $device"
sed -e "s/device = \"cpu\"/device = \"$device\"/" -e "s/^notes = .*/notes = $notes/" \
    -e "s/^steps = .*/steps = $steps/" fixtures/experiments/smoke.toml >"$work/smoke.toml"
[ -n "$epochs" ] && sed -i "s/^epochs = .*/epochs = $epochs/" "$work/smoke.toml"
time timeout 180 "$ehrprep" experiment run "$work/smoke.toml" --out "$work/smoke" --quiet ||
    echo "section 4 failed: $?"
sql "SELECT run_id, device, status, steps_done FROM train_runs"
sql "SELECT min(step), max(step), round(avg(tokens_per_s)) AS tokens_per_s,
            arg_min(loss, step) AS first_loss, arg_max(loss, step) AS last_loss FROM train_steps"
sql "SELECT task, fraction, metric, round(mean, 4) AS mean, round(majority, 4) AS majority
     FROM eval_summary ORDER BY ALL"

fi

if want 5; then
section "5. pretraining through the data path, ${pretrain[*]}"
time timeout 75 "$ehrprep" pretrain --build "$work/smoke/build" "${pretrain[@]}" --device "$device" \
    --eval-every 1000 --save-every 1000 --seed 5 --out "$work/pretrain-data" --quiet ||
    echo "section 5 failed: $?"
sql "SELECT count(*) AS steps, round(median(tokens_per_s)) AS median_tokens_per_s
     FROM train_steps JOIN train_runs USING (run_id) WHERE out LIKE '%pretrain-data%' AND step > 5"
input_length=$(sed -n 's/^input_length = //p' "$work/smoke.toml")
bare=("${pretrain[@]}")
bare=(--model "${bare[1]}" --batch "${bare[3]}" --inputs "$input_length" --targets 32 --steps 20 --warmup 3)
echo "bare step at the same shape: ${bare[*]}"
timeout 40 "$work/t5-bench" "${bare[@]}" --device "$device" || echo "bare step failed: $?"
fi

if want 6; then
section "6. resume on $device, then finetune its checkpoint on the CPU"
if [ ! -f "$db" ]; then
    "$ehrprep" synth --out "$work/smoke/synth" --notes 2000 --seed 3 >/dev/null &&
        "$ehrprep" build --mimic-dir "$work/smoke/synth" --task-data "$work/smoke/synth/tasks" \
            --out "$work/smoke/build" --vocab-size 1000 --input-length 128 \
            --validation-fraction 0.2 --quiet >/dev/null || echo "section 6 build failed: $?"
fi
run() {
    timeout 60 "$ehrprep" pretrain --build "$work/smoke/build" --model tiny --batch-size 4 \
        --warmup 10 --lr 0.01 --device "$device" --seed 9 --save-every 20 --eval-every 1000 \
        --quiet "$@" >/dev/null || echo "pretrain $* failed: $?"
}
run --steps 40 --out "$work/straight"
run --steps 20 --out "$work/split"
timeout 60 "$ehrprep" pretrain --resume "$work/split" --steps 40 --quiet >/dev/null ||
    echo "resume failed: $?"
sql "SELECT CASE WHEN out LIKE '%straight' THEN 'straight' ELSE 'resumed' END AS run, step,
            loss, grad_norm FROM train_steps JOIN train_runs USING (run_id)
     WHERE step IN (20, 21, 40) AND (out LIKE '%straight' OR out LIKE '%split')
     ORDER BY step, run"
for f in model.safetensors optimizer.safetensors; do
    if cmp -s "$work/straight/checkpoint-00000040/$f" "$work/split/checkpoint-00000040/$f"; then
        echo "step 40 $f: identical"
    else
        echo "step 40 $f: differs"
    fi
done
python3 - "$work/straight/checkpoint-00000040" "$work/split/checkpoint-00000040" <<'PY'
import sys
from safetensors.torch import load_file
a, b = (load_file(f"{d}/model.safetensors") for d in sys.argv[1:])
worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"step 40 weights: largest difference {worst:.3g} over {len(a)} tensors")
PY
timeout 120 "$ehrprep" finetune --task mednli --data "$work/smoke/synth/tasks/mednli" \
    --checkpoint "$work/straight" --fractions 0.1 --seeds 1 --epochs 1 --batch-size 16 \
    --effective-batch 16 --lr 3e-3 --max-new-tokens 16 --device cpu --threads 4 \
    --out "$work/ft-cpu" --db "$db" >/dev/null || echo "finetune on the CPU failed: $?"
sql "SELECT task, fraction, metric, round(mean, 4) AS mean FROM eval_summary
     WHERE checkpoint LIKE '%straight%' ORDER BY ALL"
fi

if want 7; then
section "7. corpus build, ${build_notes[*]} notes, $(nproc) cores"
timeout 420 python3 scripts/bench_build.py --bin "$ehrprep" --notes "${build_notes[@]}" \
    --workdir "$work/bench-build" || echo "section 7 failed: $?"
fi

if want 8; then
section "8. data-parallel pretraining on $device"
if [ ! -d "$work/straight" ]; then
    echo "section 8 compares with section 6's straight run; run ONLY=\"6 8\""
else
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    run --steps 40 --out "$work/group1" --nproc-per-node 1
    run --steps 40 --out "$work/group1gloo" --nproc-per-node 1 --dist-backend gloo
    EHRPREP_DIST_OVERLAP=0 run --steps 40 --out "$work/group1after" --nproc-per-node 1
    if [ "$gpus" -ge 2 ]; then
        timeout 120 "$ehrprep" pretrain --build "$work/smoke/build" --model tiny --batch-size 2 \
            --warmup 10 --lr 0.01 --device "$device" --seed 9 --save-every 20 \
            --eval-every 1000 --quiet --steps 40 --out "$work/group2" --nproc-per-node 2 \
            >/dev/null || echo "two ranks failed: $?"
    fi
    sql "SELECT regexp_extract(out, '[a-z0-9]+$') AS run, world_size, global_batch, step, loss,
                grad_norm, round(tokens_per_s) AS tokens_per_s
         FROM train_steps JOIN train_runs USING (run_id)
         WHERE step IN (1, 20, 40) AND regexp_matches(out, '(straight|group1|group1gloo|group1after|group2)$')
         ORDER BY step, run"
fi
fi

cp "$db" "$logs/smoke-catalog.duckdb" 2>/dev/null || true
echo "done $(date +%T)"
