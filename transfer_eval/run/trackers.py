"""Experiment trackers, optional and off by default (`run --log tensorboard|wandb`): each finished run sends them
its training curves (fine-tuning), its resolved recipe and its final record.

- tensorboard: torch's SummaryWriter, event files under LOG_DIR/tensorboard/<run>/ (`tensorboard --logdir`);
- wandb: Weights & Biases, offline unless WANDB_MODE says otherwise (no network needed; `wandb sync` later),
  files under LOG_DIR/wandb/.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from transfer_eval.errors import UserError

KINDS = ("tensorboard", "wandb")
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}  # module, extra


def check(kinds) -> None:
    """Raise UserError now, before any run, where a tracker asked for is not installed."""
    for kind in kinds:
        if kind not in KINDS:
            raise UserError(f"--log {kind}: the trackers are {', '.join(KINDS)}")
        module, extra = _NEEDS[kind]
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"--log {kind} needs the {module} package: pip install 'transfer-eval[{extra}]'") from None


def run_name(result) -> str:
    return f"run{result.run_id}_{result.checkpoint}_{result.task}_{result.mode}_seed{result.seed}".replace("/", "-")


def scalars(result) -> dict[str, float]:
    """The record's numbers (accuracy, compute, sharing), for a tracker's summary."""
    return {
        k: float(v)
        for k, v in result.to_dict().items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and k != "run_id"
    }


def publish(kinds, result, folder: str | Path) -> None:
    for kind in kinds:
        {"tensorboard": _tensorboard, "wandb": _wandb}[kind](result, Path(folder))


def _record(result) -> dict:
    return {k: v for k, v in result.to_dict().items() if k != "curves"}


def _tensorboard(result, folder: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder / "tensorboard" / run_name(result)))
    try:
        for phase, c in ((result.curves or {}).get("phases") or {}).items():
            for step, loss, lr in zip(c["step"], c["loss"], c["lr"]):
                writer.add_scalar(f"{phase}/loss", loss, step)
                writer.add_scalar(f"{phase}/lr", lr, step)
            if c.get("val_top1") is not None:
                writer.add_scalar(f"{phase}/val_top1", c["val_top1"], c["step"][-1] if c["step"] else 0)
        for k, v in scalars(result).items():
            writer.add_scalar(f"result/{k}", v, 0)
        writer.add_text("recipe", f"```\n{json.dumps(result.recipe, indent=1, sort_keys=True)}\n```", 0)
        writer.add_text("record", f"```\n{json.dumps(_record(result), indent=1, default=str)}\n```", 0)
    finally:
        writer.close()


def _wandb(result, folder: Path) -> None:
    import wandb

    (folder / "wandb").mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "transfer-eval"),
        name=run_name(result),
        dir=str(folder),
        mode=os.environ.get("WANDB_MODE", "offline"),
        config={
            "recipe": result.recipe,
            **{
                k: getattr(result, k) for k in ("checkpoint", "task", "mode", "seed", "protocol_hash", "weights_sha256")
            },
        },
        reinit=True,
    )
    try:
        for phase, c in ((result.curves or {}).get("phases") or {}).items():
            run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            for step, loss, lr in zip(c["step"], c["loss"], c["lr"]):
                run.log({f"{phase}/step": step, f"{phase}/loss": loss, f"{phase}/lr": lr})
        run.summary.update(
            {**scalars(result), "status": result.status, "record": json.dumps(_record(result), default=str)}
        )
    finally:
        run.finish()
