"""summary.json and summary.md of a scripts/gpu_check.sh run: python scripts/gpu_check_summary.py LOGS OUT.

LOGS holds environment.json, steps.tsv (name, exit status or "skipped" / "out of time", seconds) and each step's
NAME.out (its stdout: JSON lines) and NAME.log (its stderr). The summary gives each step's status and the figures
the checks are about: the demo's probe on CUDA against the CPU's (the same C, top-1 within 0.5 point), --precision
fp32 against auto, the Flowers-format run's throughput, the bench's step and extraction rates, the probe at scale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROBE_TOLERANCE = 0.005  # top-1, as a fraction: half a point


def _status(code: str) -> str:
    if code == "skipped":
        return "skipped (no CUDA device)"
    if code == "out of time":
        return "not started: out of time"
    return "ok" if code == "0" else f"failed (exit {code}{', time limit' if code == '124' else ''})"


def _rows(logs: Path, name: str) -> list[dict]:
    out = logs / f"{name}.out"
    text = out.read_text(errors="replace") if out.exists() else ""
    rows = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def _by_key(rows: list[dict]) -> dict:
    return {(r.get("checkpoint"), r.get("mode")): r for r in rows if "mode" in r}


def demo_comparison(cpu: list[dict], cuda: list[dict]) -> list[dict]:
    """Each probe of the demo on CUDA beside the CPU's: same C and top-1 within PROBE_TOLERANCE, or not."""
    out = []
    gpu = _by_key(cuda)
    for key, c in sorted(_by_key(cpu).items()):
        g = gpu.get(key)
        if g is None or c.get("status") != "ok":
            continue
        same_c = g["selection"]["chosen"] == c["selection"]["chosen"]
        delta = g["top1"] - c["top1"]
        out.append(
            {
                "checkpoint": key[0],
                "mode": key[1],
                "cpu_top1": c["top1"],
                "cuda_top1": g["top1"],
                "cpu_choice": c["selection"]["chosen"],
                "cuda_choice": g["selection"]["chosen"],
                "cuda_precision": g.get("precision"),
                "verdict": "same" if same_c and abs(delta) <= PROBE_TOLERANCE else "DIFFERS",
            }
        )
    return out


def summarise(logs: Path) -> dict:
    env = json.loads((logs / "environment.json").read_text())
    summary = {"environment": env, "steps": {}}
    for line in (logs / "steps.tsv").read_text().splitlines():
        name, code, seconds = line.split("\t")
        entry = {"status": _status(code), "seconds": int(seconds)}
        rows = _rows(logs, name)
        if rows:
            entry["json"] = rows if len(rows) > 1 else rows[0]
        if name == "cuda_tests":
            text = (logs / "cuda_tests.out").read_text() if (logs / "cuda_tests.out").exists() else ""
            entry["pytest"] = (text.strip().splitlines() or [""])[-1]
        summary["steps"][name] = entry
    summary["demo_cuda_vs_cpu"] = demo_comparison(_rows(logs, "demo_cpu"), _rows(logs, "demo_cuda"))
    auto = _by_key(_rows(logs, "demo_cuda") + _rows(logs, "demo_cuda_full"))
    summary["fp32_vs_auto"] = [
        {"checkpoint": k[0], "mode": k[1], "fp32_top1": r["top1"], "auto_top1": auto[k]["top1"]}
        for k, r in sorted(_by_key(_rows(logs, "precision_fp32")).items())
        if k in auto and r.get("top1") is not None
    ]
    return summary


def markdown(summary: dict) -> str:
    env, steps = summary["environment"], summary["steps"]
    md = [
        f"# GPU check: {env['device'] or 'no CUDA device'}, {env['date']}",
        "",
        f"torch {env['torch']}, timm {env['timm']}, torchvision {env['torchvision']}, CUDA {env['cuda_version']}, "
        f"{env['cpus']} CPUs",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    md += [f"| {n} | {s['status']} | {s['seconds']} |" for n, s in steps.items()]
    md += ["", f"CUDA tests: {steps.get('cuda_tests', {}).get('pytest', '-')}"]
    if summary["demo_cuda_vs_cpu"]:
        md += [
            "",
            "## The demo's probe, CUDA against CPU",
            "",
            "| checkpoint | CPU top-1 | CUDA top-1 | CPU C | CUDA C | verdict |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r['checkpoint']} | {100 * r['cpu_top1']:.2f} | {100 * r['cuda_top1']:.2f} | "
            f"{r['cpu_choice'].get('C', 0):.4g} | {r['cuda_choice'].get('C', 0):.4g} | {r['verdict']} |"
            for r in summary["demo_cuda_vs_cpu"]
        ]
    if summary["fp32_vs_auto"]:
        md += ["", "## --precision fp32 against auto (CUDA)", ""]
        md += [
            f"- {r['checkpoint']} {r['mode']}: fp32 {100 * r['fp32_top1']:.2f}%, auto {100 * r['auto_top1']:.2f}%"
            for r in summary["fp32_vs_auto"]
        ]
    flowers = steps.get("flowers_run", {}).get("json")
    if flowers:
        md += ["", "## ViT-B/16 (random init) on 2,040 photo-like 500x375 JPEGs (Flowers-102 format)", ""]
        md += [
            f"- {r['mode']}: train {r.get('train_images_per_second') or 0:.0f} img/s, test "
            f"{r.get('eval_images_per_second') or 0:.0f} img/s, train {r.get('train_seconds') or 0:.1f} s, "
            f"input {r.get('input_pipeline')}, precision {r.get('precision')}"
            for r in (flowers if isinstance(flowers, list) else [flowers])
        ]
    decoded = steps.get("flowers_decode", {}).get("json")
    if decoded and flowers:
        cpu = {r["mode"]: r for r in (flowers if isinstance(flowers, list) else [flowers])}
        for dev in decoded if isinstance(decoded, list) else [decoded]:
            ref = cpu.get(dev.get("mode"))
            if ref is None or dev.get("top1") is None:
                continue
            what = "extraction" if dev["mode"] == "linear" else "training"
            md += [
                f"- {dev['mode']} with --decode device: {what} {dev.get('train_images_per_second') or 0:.0f} img/s "
                f"(CPU decode: {ref.get('train_images_per_second') or 0:.0f}), test "
                f"{dev.get('eval_images_per_second') or 0:.0f} img/s (CPU decode: "
                f"{ref.get('eval_images_per_second') or 0:.0f}), top-1 {100 * dev['top1']:.2f}% (CPU decode: "
                f"{100 * ref['top1']:.2f}%), input {dev.get('input_pipeline')}"
            ]
    b = steps.get("bench", {}).get("json")
    if isinstance(b, dict) and "modes" in b:
        md += [
            "",
            f"## bench: {b['checkpoint']}, batch {b['batch_size']}, matmul peak {b['matmul_peak_tflops']:.1f} TFLOP/s",
            "",
            "| loop | suite img/s | bare img/s | ratio |",
            "|---|---|---|---|",
        ]
        md += [
            f"| {m} | {r['suite_images_per_s']:.0f} | {r['ref_images_per_s']:.0f} | {r['ratio_vs_reference']:.3f} |"
            for m, r in {**b["modes"], "extraction, decoded": b["extraction"]}.items()
        ]
        e = b["extraction"]
        j = e.get("jpeg")
        if j:
            md += [
                f"| extraction, {j['mean_jpeg_kb']:.0f} kB JPEGs | {j['images_per_s']:.0f} | "
                f"{e['ref_images_per_s']:.0f} | {j['vs_model']:.3f} |"
            ]
            d = e.get("jpeg_device_decode")
            if d:
                md.append(
                    f"| extraction, {j['mean_jpeg_kb']:.0f} kB JPEGs, --decode device | {d['images_per_s']:.0f} | "
                    f"{e['ref_images_per_s']:.0f} | {d['vs_model']:.3f} |"
                )
            md += [
                "",
                f"extraction over {e['images']} images at steady state; start-up (workers, first batch) apart: "
                f"{e['startup_s']:.2f} s decoded, {j['startup_s']:.2f} s JPEG files",
            ]
        md += _input_pipelines(b.get("input_pipeline"))
    p = steps.get("probe_imagenet", {}).get("json")
    if isinstance(p, dict) and "probe" in p:
        s = p["probe"]["suite"]
        md += [
            "",
            f"## probe, {p['probe']['n_train']} x {p['probe']['dim']} x {p['probe']['classes']}",
            "",
            f"{s['seconds']:.0f} s, {s['total_iterations']} iterations, chosen C {s['chosen_c']:.4g}, "
            f"not converged: {s['not_converged'] or 'none'}",
        ]
    md += _peft(steps.get("bench_peft", {}).get("json"))
    return "\n".join(md) + "\n"


def _peft(b: dict | None) -> list[str]:
    """Every parameter-efficient mode's training step beside full's: time, peak memory, trainable parameters."""
    if not isinstance(b, dict) or "full" not in b.get("modes", {}):
        return []
    full = b["modes"]["full"]
    md = ["", f"## the PEFT modes' training step: {b['checkpoint']}, batch {b['batch_size']}", ""]
    md += [
        "| mode | trainable | suite ms/step | vs full | peak MB | vs full | bare ms/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, r in b["modes"].items():
        md.append(
            f"| {m} | {r['params_trainable']:,} | {1000 * r['suite_step_s']:.1f} | "
            f"{r['suite_step_s'] / full['suite_step_s']:.2f} | {r['suite_peak_mb']:.0f} | "
            f"{r['suite_peak_mb'] / full['suite_peak_mb']:.2f} | {1000 * r['ref_step_s']:.1f} |"
        )
    return md


def _input_pipelines(p: dict | None) -> list[str]:
    """The bench's training input pipelines against the fastest training step, and the device decode's pixels."""
    if not p:
        return []
    rows = [
        ("500x375 JPEG, decoded in the workers", "jpeg_decode"),
        ("500x375 JPEG, decoded-image cache", "jpeg_cached"),
        ("500x375 JPEG, --decode device", "jpeg_device_decode"),
    ]
    md = ["", f"### training input ({p.get('workers')} workers, {p.get('mean_jpeg_kb', 0):.0f} kB JPEGs)", ""]
    md += ["| pipeline | img/s | against the fastest step |", "|---|---|---|"]
    for label, key in rows:
        if f"{key}_images_per_s" in p:
            keeps = p.get(f"{key}_vs_training")
            md.append(f"| {label} | {p[f'{key}_images_per_s']:.0f} | {f'{keeps:.2f}x' if keeps else '-'} |")
    for k, v in (p.get("device_decode_levels") or {}).items():
        md.append(
            f"- --decode device against the CPU path ({k}, one batch, the same draws): max {v['max']:.0f} levels, "
            f"mean {v['mean']:.3f}, {100 * v['differing']:.2f}% of values differ"
        )
    return md


def main():
    logs, out = Path(sys.argv[1]), Path(sys.argv[2])
    summary = summarise(logs)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
