"""Serving one task from its delta: the shared checkpoint plus the file `run --save-delta` wrote classify image files
with the task's own evaluation transform (`transfer-eval predict`, `transfer_eval.api.predict`).

The delta describes its run (methods/deltas.py, `served`): mode and version, resolved recipe, class names, the data
config the run read its images with (the checkpoint's, the task's input settings over it, at the run's resolution),
what the stage chose on val, the precision and the weights digest. The model is built as the run built it
(`checkpoints.build_model` with the task's class count and resolution, `modes.prepare` with the recipe), and then:

- a mode whose delta is model tensors (the probe's head, fine-tuning, LoRA and the other structural modes): they
  are loaded, `modes.merge` folds them in where the mode merges, and the suite's evaluation loop
  (`inference.outputs`) gives the logits; scores are their softmax;
- `knn`: the image's pre-logits feature (`inference.feature_array`, as the stage's features are extracted) votes
  against the stored memory with the chosen k and the recipe's temperature (`knn.scores`); scores are each class's
  share of the vote;
- `fewshot`: the same feature through the stored regression (`fewshot.scores`); scores are its outputs (targets
  +1 / -1).

The top-k classes are `inference.topk` of those scores, as the run ranked its test predictions, so the images of
the task's test split, in its order, give back the stored test predictions.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from transfer_eval import checkpoints, devices
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.input import pipeline
from transfer_eval.methods import deltas, fewshot, inference, knn, modes, sources
from transfer_eval.run import stages
from transfer_eval.tasks.splits import ImageSplit, UnreadableImage, load_image

log = logging.getLogger(__name__)

SCORES = {
    "knn": "each class's share of the weighted k-NN vote",
    "fewshot": "the few-shot regression's output (targets +1 / -1)",
}
SOFTMAX = "softmax probability"


@dataclass(frozen=True)
class Prediction:
    """One image's top-k: class indices, their names and scores, best first."""

    path: str
    labels: list[int]
    names: list[str]
    scores: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Served:
    """A delta opened for serving: its checkpoint (digest checked), mode, what it describes, and its tensors."""

    path: Path
    checkpoint: Checkpoint
    mode: modes.Mode
    info: dict  # deltas.served
    tensors: dict

    @property
    def class_names(self) -> list[str]:
        return list(self.info["classes"] or [str(i) for i in range(self.info["num_classes"])])

    @property
    def scores(self) -> str:
        return SCORES.get(self.mode.stage, SOFTMAX)


def open_delta(checkpoint: str | Checkpoint, path: str | Path, registries=()) -> Served:
    """The delta at `path` for `checkpoint` (a registry name or a Checkpoint); refused in one line where it is not
    a delta, was written before deltas described their task, names a mode this suite lacks (or another version of
    it), or was trained on other weights."""
    path = Path(path)
    meta, tensors = deltas.read(path)
    info = deltas.served(meta, path)
    mode = modes.MODES.get(info["mode"])
    if mode is None:
        raise UserError(f"delta {path} is of mode {info['mode']!r}, which this transfer-eval does not have")
    if mode.version != info["mode_version"]:
        raise UserError(
            f"delta {path} was trained by mode {mode.name} version {info['mode_version']}; this transfer-eval's "
            f"{mode.name} is version {mode.version}: rerun the run with --save-delta"
        )
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else None
    if ck is None:
        ck = checkpoints.resolve(checkpoint, checkpoints.load_registry(registries))
    digest = checkpoints.weights_digest(ck)
    if digest != info["weights_sha256"]:
        raise UserError(
            f"delta {path} was trained on other weights (checkpoint {info['checkpoint']!r}, sha256 "
            f"{info['weights_sha256'][:12]}...) than checkpoint {ck.name!r} has (sha256 {digest[:12]}...); "
            f"give the checkpoint it was trained on"
        )
    return Served(path, ck, mode, info, tensors)


def image_files(items) -> list[Path]:
    """Image files from files and folders: a file as given, a folder walked recursively for image files (the
    extensions torchvision's ImageFolder reads), sorted by their path inside it; the arguments keep their order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    items = [items] if isinstance(items, (str, Path)) else list(items)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS]
            if not found:
                raise UserError(f"folder {p} holds no image files ({' '.join(IMG_EXTENSIONS)})")
            out += sorted(found, key=lambda f: f.relative_to(p).parts)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"image {p} does not exist")
    if not out:
        raise UserError("give image files or folders to classify")
    return out


def predict(
    checkpoint: str | Checkpoint, delta: str | Path, images, top_k: int = 5, device: str = "auto", registries=()
) -> list[Prediction]:
    """Classify image files (files and folders, as `image_files`) with one task's delta on its checkpoint: each
    image's top-k classes, names and scores, in the files' order. Bad input (see `open_delta`; a missing or
    unreadable image, named) is one line, raised before anything is built."""
    if top_k < 1:
        raise UserError(f"top-k must be at least 1, got {top_k}")
    served = open_delta(checkpoint, delta, registries)
    files = image_files(images)
    split = ImageSplit.from_files(files, np.zeros(len(files), np.int64))
    bad = split.unreadable()
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        try:  # the decoder's own words, as a run's line gives them
            load_image(files[bad[0]])
            reason = "it does not decode"
        except UnreadableImage as e:
            reason = e.reason
        raise UserError(f"unreadable image {files[bad[0]]}{more}: {reason}; fix or remove the file")
    dev = devices.pick_device(device)
    info = served.info
    log.info(
        "predict: %s's delta for %s (%s, %d classes) on %s, %d images; scores: %s",
        info["mode"],
        info["task"],
        served.checkpoint.name,
        info["num_classes"],
        dev,
        len(files),
        served.scores,
    )
    with devices.using(devices.precision_policy(info["precision"], dev)):
        ranked, shown = class_scores(served, split, dev)
    top = inference.topk(ranked, top_k).numpy()
    shown = shown.cpu().numpy()
    names = served.class_names
    out = []
    for i, f in enumerate(files):
        labels = [int(c) for c in top[i] if c >= 0]
        out.append(Prediction(str(f), labels, [names[c] for c in labels], [float(shown[i, c]) for c in labels]))
    return out


def source_features(served: Served, model, split: ImageSplit, device: torch.device, plan) -> np.ndarray:
    """The feature a probe read, as its run read it: the source chosen on val (methods/sources.py) from one pass,
    normalised as the run normalised it (`standard` with the train statistics the delta keeps)."""
    recipe, info, t = served.info["recipe"], served.info, served.tensors
    chosen = (info.get("chosen") or {}).get("features") or sources.of(recipe)[0]
    proj = stages.projection(served.checkpoint, recipe.get("resolution")).to(device) if chosen == "proj" else None
    forward = sources.forward(model.to(device).eval(), [chosen], proj)
    cfg, bs = info["data_config"], int(recipe["batch_size"])
    rows = [
        o[chosen].float().cpu().numpy()
        for o in inference.outputs(forward, split, cfg, device, bs, plan, phase="features")
    ]
    x = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
    how = recipe.get("normalise", "none")
    if how == "standard" and "features.mean" not in t:
        raise UserError(f"{served.path}: a standard-normalised probe's delta without its train statistics; rerun it")
    stats = (t["features.mean"].double().numpy(), t["features.std"].double().numpy()) if how == "standard" else None
    return sources.normalise(how, x, stats)


def class_scores(served: Served, split: ImageSplit, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(the scores the run ranked classes by, the scores shown), each N x classes on the CPU."""
    info, mode, recipe = served.info, served.mode, served.info["recipe"]
    cfg = info["data_config"]
    extra = {"drop_path_rate": recipe["drop_path"]} if recipe.get("drop_path") else {}
    model, _ = checkpoints.build_model(
        served.checkpoint,
        info["num_classes"],
        recipe.get("resolution"),
        keep_head=mode.stage == "eval",
        model_kwargs=extra,
    )
    model = modes.prepare(mode, model, recipe)
    plan = pipeline.plan_input(pipeline.InputOptions(), split, cfg, device, None)
    t = served.tensors
    if mode.optional and not stages.reads_pooled(recipe):  # a feature source or normalisation the probe chose
        feats = source_features(served, model, split, device, plan)
        if mode.stage == "probe":
            with devices.strict_fp32():
                w, b = t["probe.weight"].to(device), t["probe.bias"].to(device)
                logits = (torch.from_numpy(np.ascontiguousarray(feats, np.float32)).to(device) @ w.T + b).cpu()
            return logits, logits.softmax(1)
    elif mode.stage in SCORES:
        feats = inference.feature_array(model, split, cfg, device, int(recipe["batch_size"]), plan, desc="features")
    if mode.stage in SCORES:  # the probes that keep no model part: features against the stored memory / regression
        if mode.stage == "knn":
            memory = [(t["knn.features"].numpy(), t["knn.labels"].numpy())]
            k, temperature = int(info["chosen"]["k"]), float(recipe["temperature"])
            votes = knn.scores(memory, feats, k, info["num_classes"], temperature, device).cpu()
            return votes, votes / votes.sum(1, keepdim=True).clamp_min(1e-300)
        w = [t[f"fewshot.{n}"].double().numpy() for n in ("mean", "std", "weight")]
        out = torch.from_numpy(fewshot.scores(feats, *w, device))
        return out, out
    deltas.load_into(model, served.tensors, served.path)
    model = modes.merge(mode, model).to(device).eval()
    bs = inference.eval_batch_size(recipe)
    logits = [x.float().cpu() for x in inference.outputs(model, split, cfg, device, bs, plan, desc="predict")]
    logits = torch.cat(logits) if logits else torch.zeros(0, info["num_classes"])
    return logits, logits.softmax(1)
