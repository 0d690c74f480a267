#!/usr/bin/env bash
# The GPU check, in one command, at the repository root of a GPU machine with no network:
#
#   bash scripts/gpu_check.sh OUT_DIR
#
# Installs nothing (torch, timm and friends must be there already; the suite is used from this checkout through
# PYTHONPATH). It finishes within 8 minutes (DEADLINE seconds of steps, each step's limit cut to what is left;
# a step that cannot start in time is reported "out of time") on one H100/H200-class GPU with 16 cores:
#
#   cuda_tests      python -m pytest -m cuda tests/test_cuda.py
#   demo_cpu        the linear probe of vit_demo and vit_demo_shapes on digits, on the CPU (the reference)
#   demo_cuda       the same probes and vit_demo_shapes' full fine-tuning on CUDA (precision auto): the summary
#                   compares each probe with the CPU's (the same C, top-1 within 0.5 point)
#   precision_fp32  vit_demo_shapes linear and full on CUDA with --precision fp32, against demo_cuda
#   flowers_data    a Flowers-102-format folder of 2,040 photo-like 500x375 JPEGs (scripts/flowers_like.py)
#   flowers_run     ViT-B/16 (random init) linear and attention on it: extraction, training, evaluation img/s
#   flowers_decode  the same run with --decode device (nvJPEG decode, Pillow's resize on the GPU): extraction,
#                   training and evaluation img/s and top-1 beside flowers_run's, mode by mode (on a CPU the plan
#                   gives PIL's pixels exactly; on the GPU only nvJPEG's decode may differ: the top-1 shows it)
#   bench           the training step and extraction of ViT-B/16, batch 128, against bare loops (extraction at
#                   steady state over 3,072 images, decoded and photo-like JPEG files), and the training input
#                   pipelines (CPU workers, --decode device) against the step, with the device decode's pixel
#                   difference from the CPU path; each part's figures are logged as soon as they exist
#   probe_imagenet  the linear probe on ImageNet-size synthetic features (1,281,167 x 768 x 1000)
#   bench_peft      the training step of every parameter-efficient mode (bitfit, lora, ssf, vpt_shallow, vpt_deep,
#                   adapter, adaptformer) beside full and attention on ViT-B/16, batch 64: step time, peak memory
#
# Every step prints a line as it starts and as it ends, and a failed step does not stop the others. OUT_DIR gets
# three files only (what a borrowed machine hands back): summary.md, summary.json, and logs.tar.gz (each step's
# output and log). On a machine without CUDA the CUDA tests run (and skip, saying why) and the GPU steps are
# reported skipped. GPU_CHECK_DRY=1 runs every step's command with --help instead (tests/test_gpu_check.py).
set -u
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
logs="$work/logs"
mkdir -p "$logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
export TRANSFER_EVAL_CACHE="$work/cache" TRANSFER_EVAL_RESULTS="$work/results.sqlite"
py=${PYTHON:-python3}
dry=${GPU_CHECK_DRY:-0}
deadline=${GPU_CHECK_DEADLINE:-460}
steps="$logs/steps.tsv"
: > "$steps"
began=$SECONDS

step() {  # step NAME SECONDS COMMAND...: run under min(SECONDS, time left); log it; record name, status, seconds
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - (SECONDS - began)))
  if [ "$left" -lt 15 ]; then
    printf '%s\tout of time\t0\n' "$name" >> "$steps"
    echo "gpu_check: $name not started: out of time" >&2
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$dry" = 1 ]; then set -- "$@" --help; fi
  echo "gpu_check: $name started (limit $limit s): $*" >&2
  local start=$SECONDS
  timeout "$limit" "$@" > "$logs/$name.out" 2> >(tee "$logs/$name.log" >&2)
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$steps"
  echo "gpu_check: $name ended: exit $rc in $((SECONDS - start)) s" >&2
}

skip() {  # skip NAME...: GPU steps on a machine without CUDA
  for name in "$@"; do
    printf '%s\tskipped\t0\n' "$name" >> "$steps"
    echo "gpu_check: $name skipped (no CUDA device)" >&2
  done
}

"$py" - > "$logs/environment.json" <<'EOF'
import datetime, json, os, platform, torch, timm, torchvision
print(json.dumps({"date": datetime.date.today().isoformat(), "torch": torch.__version__, "timm": timm.__version__,
                  "torchvision": torchvision.__version__, "python": platform.python_version(),
                  "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "cuda_version": torch.version.cuda, "cpus": len(os.sched_getaffinity(0))}))
EOF
cuda=$("$py" -c "import torch; print(int(torch.cuda.is_available()))")
[ "$dry" = 1 ] && cuda=1  # every command line is tried (with --help), CUDA or not

te=("$py" -m transfer_eval)
demo=(-t digits --json)
step cuda_tests 150 "$py" -m pytest -q -m cuda -p no:cacheprovider -rs tests/test_cuda.py
if [ "$cuda" = 1 ]; then
  step demo_cpu 40 env TRANSFER_EVAL_CACHE="$work/cpu-cache" "${te[@]}" run -c vit_demo,vit_demo_shapes -m linear \
    "${demo[@]}" --device cpu --results "$work/cpu.sqlite"
  step demo_cuda 60 "${te[@]}" run -c vit_demo,vit_demo_shapes -m linear "${demo[@]}" --device cuda
  step demo_cuda_full 40 "${te[@]}" run -c vit_demo_shapes -m full "${demo[@]}" --device cuda
  step precision_fp32 60 "${te[@]}" run -c vit_demo_shapes -m linear,full "${demo[@]}" --device cuda \
    --precision fp32
  step flowers_data 40 "$py" scripts/flowers_like.py "$work/data" --images 2040 --workers 15
  step flowers_run 120 "${te[@]}" run -c vit_base_patch16_224 -t flowers102 -m linear,attention --device cuda \
    --data-dir "$work/data" --skip-verify --set steps=60 --set "lr_grid=[0.01]" --set retrain=false --json
  step flowers_decode 90 "${te[@]}" run -c vit_base_patch16_224 -t flowers102 -m linear,attention --device cuda \
    --data-dir "$work/data" --skip-verify --set steps=60 --set "lr_grid=[0.01]" --set retrain=false \
    --decode device --results "$work/decode.sqlite" --json
  step bench 120 "${te[@]}" bench -c vit_base_patch16_224 -m full,attention --batch-size 128 --steps 10 \
    --images 3072 --device cuda --json
  step probe_imagenet 90 "${te[@]}" bench --scale --n 1281167 --dim 768 --classes 1000 --c-grid 0.1,1 \
    --no-sklearn --extract-sizes 0 --device cuda --json
  step bench_peft 100 "${te[@]}" bench -c vit_base_patch16_224 \
    -m full,attention,bitfit,lora,ssf,vpt_shallow,vpt_deep,adapter,adaptformer --batch-size 64 --steps 5 \
    --images 128 --device cuda --json
else
  skip demo_cpu demo_cuda demo_cuda_full precision_fp32 flowers_data flowers_run flowers_decode bench probe_imagenet \
    bench_peft
fi

"$py" scripts/gpu_check_summary.py "$logs" "$out"
tar -czf "$out/logs.tar.gz" -C "$work" logs
rm -rf "$work"
echo "gpu_check: done in $((SECONDS - began)) s; $out holds summary.md, summary.json and logs.tar.gz" >&2
