#!/usr/bin/env bash
# Every GPU figure of vdiff in one command, within 10 minutes on one H100 (docs/benchmarks.md, "GPU"):
#
#   bash bench/gpu_all.sh OUT            # on a CUDA machine
#   bash bench/gpu_all.sh OUT --smoke    # tiny sizes on --device cpu (tests/bench/test_gpu_all.py runs it)
#
# Writes OUT/gpu_all.md (one markdown table: step, status, seconds against its budget, key figures),
# OUT/gpu_all.json (the same with each step's full JSON), and OUT/<step>.log / OUT/<step>.json.
# Each step runs under its own timeout (`timeout`, budgets below), so one failure or hang costs at
# most its budget; a failed, timed-out or skipped step is recorded and the script goes on. The
# exit status is 0 when every step that ran passed, 1 otherwise, 2 on a usage error.
#
# Budget per step on one H100 (seconds; the sum, 570 s, leaves 30 s of the 10 minutes for start-up):
#   kernel_tests        60  pytest tests/vdiff/attention on CUDA tensors (the Triton kernels compiled, not interpreted)
#   attention           90  bench/attention.py: sage/sparse/sparse_sage vs SDPA flash, N = 16384 and 32768, bf16
#   train_vs_diffusers  60  bench/train_step.py: vdiff vs diffusers, a Wan2.1-1.3B block pair (wan-block), bf16
#   train_variants      90  bench/train_step.py at wan2.1-1.3b (30 layers, 7800 tokens), bf16: eager, activation
#                           checkpointing (full), FSDP2 on a 1-rank group; step time, memory, MFU
#   train_compile      120  the same with torch.compile of each block, without and with activation checkpointing
#   sample             105  bench/sample.py at 81x480x832 (32760 tokens), bf16: dense, sparse_sage, step cache
#                           (TeaCache 0.1), and vdiff vs diffusers' WanPipeline
#   eval_models         45  bench/eval_models.py: CLIP B/32, L/14, ViCLIP-L/14, DINO ViT-B/16 forwards, bf16
#   parallel_train    (60)  bench/parallel_train.py on 2 GPUs (NCCL); skipped on a 1-GPU machine
# --smoke runs the same steps on CPU at tiny sizes with short budgets (under a minute in all on 2 cores;
# torch.compile is left out there: on CPU it spends a minute compiling C++) and collects the tests instead
# of running them (the default suite runs them in Triton's interpreter already).
set -uo pipefail

usage() {
  echo "usage: bash bench/gpu_all.sh OUT [--smoke]  (OUT: a folder for the table, the JSON and the logs)" >&2
  exit 2
}
[[ $# -ge 1 && $# -le 2 ]] || usage
out=$1
smoke=0
if [[ $# -eq 2 ]]; then
  [[ $2 == --smoke ]] || usage
  smoke=1
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo" || exit 2
mkdir -p "$out" || { echo "gpu_all.sh: cannot create the output folder $out" >&2; exit 2; }
out=$(cd "$out" && pwd)

if [[ $smoke -eq 0 ]]; then
  if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_all.sh: torch sees no CUDA device here; run 'bash bench/gpu_all.sh $out --smoke' for the CPU smoke run" >&2
    exit 2
  fi
  gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
  { nvidia-smi -L 2>/dev/null | head -1 || true; } > "$out/machine.txt"
  [[ -s $out/machine.txt ]] || "$py" -c "import torch; print(torch.cuda.get_device_name())" > "$out/machine.txt"
  dev=(--device cuda --dtype bfloat16)
else
  gpus=0
  "$py" -c "import os, platform, torch; print(f'smoke run on CPU ({os.cpu_count()} cores, torch {torch.__version__})')" \
    > "$out/machine.txt"
  dev=(--device cpu)
  # NOTE: one thread a process: on a small shared CPU, OpenMP's spinning threads can slow a tiny step 100x.
  export OMP_NUM_THREADS=1
fi
: > "$out/steps.tsv"
failed=0

# run_step NAME BUDGET_SECONDS COMMAND...: run under a timeout, log to OUT/NAME.log, record a steps.tsv line.
run_step() {
  local name=$1 budget=$2
  shift 2
  echo "== $name (budget ${budget} s): $*" >&2
  local start end rc status
  start=$(date +%s.%N)
  timeout -k 10 "$budget" "$@" > "$out/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  [[ $status == ok ]] || failed=1
  [[ $status == ok ]] || tail -5 "$out/$name.log" >&2
  printf '%s\t%s\t%d\t%s\t%d\t%s\n' "$name" "$status" "$rc" "$(echo "$end - $start" | bc)" "$budget" "$*" \
    >> "$out/steps.tsv"
}

# skip_step NAME REASON: record a step that did not run, and why.
skip_step() {
  echo "== $1: skipped ($2)" >&2
  echo "skipped: $2" > "$out/$1.log"
  printf '%s\tskipped\t0\t0\t0\t%s\n' "$1" "$2" >> "$out/steps.tsv"
}

if [[ $smoke -eq 0 ]]; then
  run_step kernel_tests 60 "$py" -m pytest -q -p no:cacheprovider tests/vdiff/attention
  run_step attention 90 "$py" bench/attention.py "${dev[@]}" --tokens 16384 32768 --head-dims 128 \
    --repeat 5 --json "$out/attention.json"
  run_step train_vs_diffusers 60 "$py" bench/train_step.py "${dev[@]}" --sizes wan-block --repeat 5 \
    --warmup 2 --json "$out/train_vs_diffusers.json"
  run_step train_variants 90 "$py" bench/train_step.py "${dev[@]}" --sizes wan2.1-1.3b --no-diffusers \
    --variants eager,ac,fsdp --repeat 4 --warmup 1 --json "$out/train_variants.json"
  run_step train_compile 120 "$py" bench/train_step.py "${dev[@]}" --sizes wan2.1-1.3b --no-diffusers \
    --variants eager,compile,ac+compile --repeat 4 --warmup 2 --json "$out/train_compile.json"
  run_step sample 105 "$py" bench/sample.py "${dev[@]}" --frames 81 --height 480 --width 832 --steps 10 \
    --repeat 1 --layers 2 --heads 12 --head-dim 128 --cache-thresholds 0.1 --no-eval --json "$out/sample.json"
  run_step eval_models 45 "$py" bench/eval_models.py "${dev[@]}" --batch 16 --repeat 5 --json "$out/eval_models.json"
  if [[ $gpus -ge 2 ]]; then
    run_step parallel_train 60 "$py" bench/parallel_train.py "${dev[@]}" --rounds 1 --steps 4 --warmup 1 \
      --latent 8x32x32 --batch 2 --json "$out/parallel_train.json"
  else
    skip_step parallel_train "needs 2 GPUs, torch sees $gpus"
  fi
else
  run_step kernel_tests 30 "$py" -m pytest -q -p no:cacheprovider --collect-only tests/vdiff/attention
  run_step attention 30 "$py" bench/attention.py "${dev[@]}" --quick --tokens 1024 --head-dims 64 \
    --inputs random --json "$out/attention.json"
  run_step train_vs_diffusers 30 "$py" bench/train_step.py "${dev[@]}" --quick --json "$out/train_vs_diffusers.json"
  run_step train_variants 30 "$py" bench/train_step.py "${dev[@]}" --quick --no-diffusers \
    --variants eager,ac,fsdp --json "$out/train_variants.json"
  skip_step train_compile "smoke run: torch.compile on CPU spends a minute compiling C++"
  run_step sample 60 "$py" bench/sample.py "${dev[@]}" --frames 5 --height 32 --width 32 --steps 2 --repeat 1 \
    --layers 1 --heads 2 --head-dim 12 --cache-thresholds 0.1 --no-eval --no-diffusers --json "$out/sample.json"
  run_step eval_models 30 "$py" bench/eval_models.py "${dev[@]}" --quick --models clip_b32,dino_vitb16 \
    --json "$out/eval_models.json"
  run_step parallel_train 30 "$py" bench/parallel_train.py "${dev[@]}" --quick --json "$out/parallel_train.json"
fi

"$py" bench/gpu_all_report.py "$out" || failed=1
exit $failed
