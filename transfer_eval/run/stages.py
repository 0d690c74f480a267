"""What a mode's stage does between "model adapted" and "test scored", each returning a `Trained`:

- probe: the linear probe on cached features (C chosen on val, refit on train+val);
- fewshot: big_vision's closed-form few-shot regression (scores test itself: nothing is chosen);
- knn: DINO's weighted k-NN on cached features (k chosen on val; scores test itself);
- finetune: the training loop (lr chosen on val, optional retrain);
- eval: nothing trains.

A stage knows nothing of results, stores or the stages after it; the runner turns its Trained into a Result.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from transfer_eval.input import pipeline
from transfer_eval.methods import costs, fewshot, finetune, knn, probe

if TYPE_CHECKING:
    from transfer_eval.run.runner import Run


@dataclass
class Trained:
    """What a stage hands back: its model choice on val, its training figures, and the tensors the task keeps."""

    val_top1: float | None
    selection: dict | None
    train_seconds: float
    train_images: int  # images whose compute the training cost counts (forward passes, or training steps' images)
    train_gflops_per_image: float
    train_images_per_second: float | None
    delta: dict[str, torch.Tensor] | None = None  # None: the model's trainable tensors, after the stage
    test_top5: np.ndarray | None = None  # set where the stage scores test itself (few-shot's regression)
    test_seconds: float | None = None
    fields: dict = field(default_factory=dict)  # record fields only this stage fills


@dataclass
class Stage:
    """What every stage receives."""

    run: Run
    model: torch.nn.Module
    cfg: dict
    splits: dict
    device: torch.device
    plan: pipeline.InputPlan
    fwd_gflops: float
    resume: object = None  # fine-tuning's RunCheckpoints
    compile: bool = False
    loaders: pipeline.EvalLoaders | None = None  # the run's evaluation loaders (workers started once for its splits)

    def loader(self, name: str, batch_size: int):
        """(loader, pipe) of split `name`'s evaluation passes, or None (made where it is needed)."""
        return self.loaders.get(name, batch_size) if self.loaders is not None else None

    def features(self, name: str):
        """(features, labels, extraction seconds or 0.0 on a cache hit) of one split, through the feature cache."""
        start = time.perf_counter()
        key_parts = {
            "weights_sha256": self.run.weights_sha256,
            "checkpoint": self.run.checkpoint,
            "task": self.run.task,
            "split_name": name,
        }
        feats, labels, hit = probe.cached_features(
            self.model,
            self.splits[name],
            self.cfg,
            self.device,
            int(self.run.recipe["batch_size"]),
            key_parts,
            desc=f"features {name}",
            plan=self.plan,
            loader=self.loader(name, int(self.run.recipe["batch_size"])),
        )
        return feats, labels, 0.0 if hit else time.perf_counter() - start


def probe_stage(s: Stage) -> Trained:
    """The linear probe: features of train and val (cached), C chosen on val, refit on train+val; the classifier
    becomes the model's head, so the stored delta is a usable model part."""
    (xtr, ytr, t_tr), (xva, yva, t_va) = s.features("train"), s.features("val")
    t1 = time.perf_counter()
    out = probe.linear_probe(
        (xtr, ytr),
        (xva, yva),
        s.run.task.num_classes,
        s.run.recipe["c_grid"],
        s.device,
        s.run.recipe["tol"],
        s.run.recipe["max_iter"],
    )
    fit_seconds = time.perf_counter() - t1
    head = s.model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(out["head_weight"]))
        head.bias.copy_(torch.from_numpy(out["head_bias"]))
    n, extract = len(ytr) + len(yva), t_tr + t_va
    # A probe's training compute is the feature extraction over train+val (the classifier's is negligible).
    return Trained(
        out["val_top1"],
        {**out["selection"], "features_cached": extract == 0.0},
        extract + fit_seconds,
        n,
        s.fwd_gflops,
        n / extract if extract > 0 else None,
    )


def fewshot_stage(s: Stage) -> Trained:
    """big_vision's few-shot evaluator for one (shots, seed): features of train and test (cached), k examples
    per class sampled by the run's seed, closed-form ridge regression, test top-1. Nothing is chosen (lambda is
    fixed), so test is open to it."""
    s.splits["test"].unseal()
    xtr, ytr, extract = s.features("train")
    xte, _, test_seconds = s.features("test")
    shots, recipe = int(s.run.recipe["shots"]), s.run.recipe
    counts = np.bincount(ytr)
    short = int(((counts > 0) & (counts < shots)).sum())  # classes with fewer than k examples give all they have
    idx = np.sort(fewshot.indices(ytr, shots, s.run.seed))  # in file order: one pass over memory-mapped features
    start = time.perf_counter()
    mean, std, w = fewshot.solve(xtr[idx], ytr[idx], s.run.task.num_classes, recipe["l2"], s.device)
    top5 = fewshot.predict(xte, mean, std, w, s.device)
    solve_seconds = time.perf_counter() - start
    selection = {
        "searched": "none (l2 fixed)",
        "l2": recipe["l2"],
        "examples": int(len(idx)),
        "classes_short_of_k": short,
        "features_cached": extract == 0.0,
    }
    delta = {
        "fewshot.weight": torch.from_numpy(w.astype(np.float32)),
        "fewshot.mean": torch.from_numpy(mean.astype(np.float32)),
        "fewshot.std": torch.from_numpy(std.astype(np.float32)),
    }
    # training compute: the forward passes of the few-shot examples the solve needs
    return Trained(
        None,
        selection,
        extract + solve_seconds,
        len(idx),
        s.fwd_gflops,
        len(ytr) / extract if extract else None,
        delta=delta,
        test_top5=top5,
        test_seconds=test_seconds,
        fields={"shots": shots, "params_trainable": int(w.size), "params_per_task": int(w.size)},
    )


def knn_stage(s: Stage) -> Trained:
    """DINO's weighted k-NN on cached features: train is the memory and val the queries for every k of the recipe
    (the best on val is chosen), then train+val is the memory and test the queries, with the chosen k. Nothing
    trains: what one more task keeps is that memory (its L2-normalised features and labels), the stored delta."""
    recipe, classes = s.run.recipe, s.run.task.num_classes
    ks, temperature = recipe["k"], recipe["temperature"]  # as runner.resolve_recipe checked them
    (xtr, ytr, t_tr), (xva, yva, t_va) = s.features("train"), s.features("val")
    start = time.perf_counter()
    val = knn.classify([(xtr, ytr)], xva, ks, classes, temperature, s.device)
    grid = {k: float((top5[:, 0] == yva).mean()) for k, top5 in val.items()}
    chosen = knn.choose(grid)
    search_seconds = time.perf_counter() - start
    s.splits["test"].unseal()  # every choice is made
    xte, _, test_seconds = s.features("test")
    start = time.perf_counter()
    memory = [(xtr, ytr), (xva, yva)]
    top5 = knn.classify(memory, xte, [chosen], classes, temperature, s.device)[chosen]
    test_seconds += time.perf_counter() - start
    n, extract = len(ytr) + len(yva), t_tr + t_va
    # the memory as stored: one N x D copy, L2-normalised in place (as F.normalize computes it), not two
    features = torch.from_numpy(np.concatenate([xtr, xva]).astype(np.float32, copy=False))
    features /= features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    selection = {
        "searched": "k (neighbours voting) of DINO's weighted k-NN on L2-normalised features, memory train, "
        "queries val",
        "grid": {str(k): round(a, 6) for k, a in grid.items()},
        "chosen": {"k": chosen},
        "temperature": temperature,
        "refit": "train+val as the memory of the test queries",
        "memory_images": n,
        "features_cached": extract == 0.0,
    }
    delta = {"knn.features": features, "knn.labels": torch.from_numpy(np.concatenate([ytr, yva]).astype(np.int64))}
    return Trained(
        grid[chosen],
        selection,
        extract + search_seconds,
        n,
        s.fwd_gflops,
        n / extract if extract else None,
        delta=delta,
        test_top5=top5,
        test_seconds=test_seconds,
    )


RECIPE_FIELDS = {f.name for f in dataclasses.fields(finetune.Recipe)}


def training_recipe(recipe: dict) -> finetune.Recipe:
    """The finetune.Recipe of a resolved fine-tuning recipe, the mode's own fields (lora_targets, ...) left out."""
    return finetune.make_recipe({k: v for k, v in recipe.items() if k in RECIPE_FIELDS})


def finetune_stage(s: Stage) -> Trained:
    recipe = training_recipe(s.run.recipe)
    gflops = costs.train_step_flops(s.model, s.cfg, s.device) / 1e9
    out = finetune.finetune(
        s.model,
        s.splits["train"],
        s.splits["val"],
        s.cfg,
        recipe,
        s.device,
        s.run.seed,
        s.resume,
        s.plan,
        s.compile,
        s.loader("val", recipe.eval_batch_size),
    )
    seconds = out["train_seconds"]
    return Trained(
        out["val_top1"],
        out["selection"],
        seconds,
        out["train_images"],
        gflops,
        out["train_images"] / seconds if seconds else None,
        fields={
            "micro_batch_size": out["micro_batch_size"],
            "oom_backoffs": out["oom_backoffs"],
            "curves": out["curves"],
        },
    )


def eval_stage(s: Stage) -> Trained:
    return Trained(None, None, 0.0, 0, 0.0, None)


STAGES = {
    "probe": probe_stage,
    "fewshot": fewshot_stage,
    "knn": knn_stage,
    "finetune": finetune_stage,
    "eval": eval_stage,
}
