#!/usr/bin/env bash
# The GPU check, in one command, at the repository root of a GPU machine with no network:
#
#   bash scripts/gpu_check.sh OUT_DIR
#
# Installs nothing (torch, timm and friends must be there already; the suite is used from this checkout through
# PYTHONPATH). Within 8 minutes (the steps' limits add up to 9.5) on one H100/H200-class GPU it runs the CUDA tests; the training-step bench
# for ViT-B/16 at 224 px in full, attention and lora, batch 128, eager and with --compile (each also times the
# input pipelines on CUDA: 32 px resized on the device against CPU workers, 500x375 JPEGs decoded against the
# image cache); the offline demo in three modes on CUDA; and the linear probe on ImageNet-size synthetic features
# (1.28M x 768 x 1000). Every step has its own time limit, and a failed step does not stop the others.
# OUT_DIR gets each step's log and JSON, summary.json and summary.md. On a machine without CUDA it runs what
# needs no GPU and reports the GPU parts as skipped.
set -u
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
export TRANSFER_EVAL_CACHE="$out/cache" TRANSFER_EVAL_RESULTS="$out/results.sqlite"
py=${PYTHON:-python3}
te() { "$py" -m transfer_eval "$@"; }
steps="$out/steps.tsv"
: > "$steps"

step() {  # step NAME SECONDS COMMAND...: run with a time limit; log its output; record name, status, seconds
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.out" 2> "$out/$name.log"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$steps"
  echo "gpu_check: $name exit $rc in $((SECONDS - start)) s" >&2
}

"$py" - > "$out/environment.json" <<'EOF'
import json, platform, torch, timm
print(json.dumps({"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
                  "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "cuda_version": torch.version.cuda, "cpus": len(__import__("os").sched_getaffinity(0))}))
EOF
cuda=$("$py" -c "import torch; print(int(torch.cuda.is_available()))")

step cuda_tests 150 "$py" -m pytest -q -m cuda -p no:cacheprovider -rs tests/test_cuda.py
if [ "$cuda" = 1 ]; then
  step bench_eager 90 te bench -c vit_base_patch16_224 -m full,attention,lora --batch-size 128 --steps 10 \
    --device cuda --json
  step bench_compile 150 te bench -c vit_base_patch16_224 -m full,attention,lora --batch-size 128 --steps 10 \
    --device cuda --compile --json
  step demo_cuda 60 te run -c vit_demo -t digits -m linear,attention,full --device cuda --json
  step probe_imagenet_size 120 te bench --scale --n 1281167 --dim 768 --classes 1000 --c-grid 0.1,1 \
    --no-sklearn --extract-sizes 0 --device cuda --json
else
  for name in bench_eager bench_compile demo_cuda probe_imagenet_size; do
    printf '%s\tskipped\t0\n' "$name" >> "$steps"
  done
fi

"$py" - "$out" <<'EOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
env = json.loads((out / "environment.json").read_text())
summary = {"environment": env, "steps": {}}
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    entry = {"status": "skipped (no CUDA device)" if status == "skipped" else
             ("ok" if status == "0" else f"failed (exit {status}{', time limit' if status == '124' else ''})"),
             "seconds": int(seconds)}
    text = (out / f"{name}.out").read_text() if (out / f"{name}.out").exists() else ""
    rows = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    if rows:
        entry["json"] = rows if len(rows) > 1 else rows[0]
    if name == "cuda_tests":
        entry["pytest"] = (text.strip().splitlines() or [""])[-1]
    summary["steps"][name] = entry
(out / "summary.json").write_text(json.dumps(summary, indent=1))

md = [f"# GPU check: {env['device'] or 'no CUDA device'}", "",
      f"torch {env['torch']}, timm {env['timm']}, CUDA {env['cuda_version']}, {env['cpus']} CPUs", "",
      "| step | status | seconds |", "|---|---|---|"]
md += [f"| {n} | {s['status']} | {s['seconds']} |" for n, s in summary["steps"].items()]
tests = summary["steps"].get("cuda_tests", {})
md += ["", f"CUDA tests: {tests.get('pytest', '-')}"]
for name in ("bench_eager", "bench_compile"):
    b = summary["steps"].get(name, {}).get("json")
    if b:
        md += ["", f"## {name}: {b['checkpoint']}, batch {b['batch_size']}, matmul peak "
                   f"{b['matmul_peak_tflops']:.1f} TFLOP/s", "",
               "| mode | suite img/s | bare img/s | ratio | ms/step | peak MB | of matmul peak |", "|---|---|---|---|---|---|---|"]
        md += [f"| {m} | {r['suite_images_per_s']:.0f} | {r['ref_images_per_s']:.0f} | {r['ratio_vs_reference']:.3f} | "
               f"{1000 * r['suite_step_s']:.1f} | {r['suite_peak_mb']:.0f} | {100 * r['fraction_of_matmul_peak']:.1f}% |"
               for m, r in b["modes"].items()]
        if "attention_vs_full_step_time" in b:
            md += ["", f"attention / full: step time {b['attention_vs_full_step_time']:.3f}x, peak memory "
                       f"{b['attention_vs_full_peak_memory']:.3f}x"]
        md += ["", "input pipelines (img/s): " + ", ".join(f"{k} {v:.2f}" for k, v in b["input_pipeline"].items()
                                                      if isinstance(v, float))]
demo = summary["steps"].get("demo_cuda", {}).get("json")
if demo:
    md += ["", "## demo on CUDA", ""] + [f"- {r['mode']}: top-1 {100 * r['top1']:.2f}%, train {r['train_seconds']:.1f} s, "
                                         f"peak {r['peak_memory_mb']:.0f} MB" for r in (demo if isinstance(demo, list) else [demo])]
p = summary["steps"].get("probe_imagenet_size", {}).get("json")
if p:
    s = p["probe"]["suite"]
    md += ["", f"## probe, {p['probe']['n_train']} x {p['probe']['dim']} x {p['probe']['classes']}", "",
           f"{s['seconds']:.0f} s, {s['total_iterations']} iterations ({s['seconds_per_iteration']:.3f} s each), "
           f"chosen C {s['chosen_c']:.4g}, not converged: {s['not_converged'] or 'none'}"]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
