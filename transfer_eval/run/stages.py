"""What a mode's stage does between "model adapted" and "test scored", each returning a `Trained`:

- probe: the linear probe on cached features (C, and the feature source where the recipe lists several, chosen on
  val; refit on train+val);
- fewshot: big_vision's closed-form few-shot regression (nothing is chosen);
- knn: DINO's weighted k-NN on cached features (k chosen on val);
- finetune: the training loop (lr chosen on val, optional retrain);
- eval: nothing trains.

A stage never reads test: it hands back how a split is scored (`Trained.scorer`, methods/scoring.py; none where
the run's model scores it, after its merge) and the temperature it fitted on val, and the run applies that scorer
to test and to each companion set's test. A stage knows nothing of results, stores or the stages after it; the
runner turns its Trained into a Result.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from transfer_eval import checkpoints, devices
from transfer_eval.errors import UserError
from transfer_eval.input import pipeline
from transfer_eval.methods import costs, fewshot, finetune, knn, probe, scoring, sources
from transfer_eval.run.runs import Run


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
    scorer: scoring.Scorer | None = None  # how a split is scored (its features); None: by the deployed model
    temperature: float | None = None  # T fitted on val (calibration); None: no probabilities, or no val
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

    def features(self, name: str, **split):
        """(features, labels, extraction seconds or 0.0 on a cache hit) of one split, through the feature cache:
        the run's one feature source (fewshot's). `split`: as `sources`."""
        feats, labels, seconds = self.sources(name, **split)
        return feats[sources.of(self.run.recipe)[0]], labels, seconds

    def sources(self, name: str, names: list[str] | None = None, split=None, task=None, plan=None, loader=None):
        """({source: features}, labels, extraction seconds or 0.0 on a cache hit) of one split, through the feature
        cache: every feature source the run asks for (or `names`), the missing ones from one pass over the split.
        `split`: a split to read as split `name` of `task` (a companion set's test, cached under its own task),
        through `plan` and `loader(batch size)` where given, instead of the run's own."""
        names = names or sources.of(self.run.recipe)
        start = time.perf_counter()
        bs = int(self.run.recipe["batch_size"])
        if split is None:
            split, task, plan, pair = self.splits[name], self.run.task, self.plan, self.loader(name, bs)
        else:
            task, plan, pair = task or self.run.task, plan or self.plan, loader(bs) if loader is not None else None
        key_parts = {
            "weights_sha256": self.run.weights_sha256,
            "checkpoint": self.run.checkpoint,
            "task": task,
            "split_name": name,
        }
        feats, labels, hit = probe.cached_sources(
            self.model,
            split,
            self.cfg,
            self.device,
            bs,
            key_parts,
            names,
            desc=f"features {name}" if task is self.run.task else f"features {name} {task.name}",
            plan=plan,
            loader=pair,
            projection=self._projection() if "proj" in names else None,
        )
        return feats, labels, 0.0 if hit else time.perf_counter() - start

    def _projection(self):
        """The checkpoint's projection (its pretrained head: CLIP's image projection), built once."""
        if getattr(self, "_proj", None) is None:
            self._proj = projection(self.run.checkpoint, self.run.recipe.get("resolution")).to(self.device)
        return self._proj


def projection(ck, resolution: int | None = None) -> torch.nn.Module:
    """The pretrained head where it projects to an embedding space (the registry's `probe.projection`, its width:
    CLIP's image projection), as a module: the `proj` feature source applies it to `pooled`."""
    width = ck.probe.get("projection")
    if not width:
        raise UserError(f"checkpoint {ck.name!r} has no projection (the registry's probe.projection)")
    model, _ = checkpoints.build_model(ck, int(width), resolution, keep_head=True)
    return model.get_classifier().eval()


def reads_pooled(recipe: dict) -> bool:
    """A probe run that reads the pooled features as they come: the protocol of every run before feature sources."""
    return sources.of(recipe) == [sources.DEFAULT] and recipe.get("normalise", "none") == "none"


def _source_record(names: list[str], how: str, grid: dict[str, float], chosen: str) -> dict:
    """What a probe's selection says of its feature sources (nothing at the defaults, as before sources)."""
    out = {"features": chosen, "normalise": how}
    if len(names) > 1:
        out["features_grid"] = {n: round(a, 6) for n, a in grid.items()}
        out["features_searched"] = "feature source, on val, with the probe's own choices (ties: the first listed)"
    return out


def _first_best(grid: dict[str, float]) -> str:
    """The source with the best val accuracy; equal accuracies go to the one listed first (DINOv2's strict >)."""
    top = max(grid.values())
    return next(n for n, a in grid.items() if a == top)


def probe_stage(s: Stage) -> Trained:
    """The linear probe: features of train and val (cached), C chosen on val, refit on train+val; the classifier
    becomes the model's head, so the stored delta is a usable model part. With several feature sources, each gets
    its C search and the best on val wins (test is never read for it); a source other than `pooled`, or a
    normalisation, is scored through its features (the head then reads them, not the model's output).

    Its temperature is fitted on val with the chosen C's fit on train alone, and applied to the refit's logits:
    the refit on train+val has seen val, so its val logits would say it is better calibrated than it is."""
    names, how = sources.of(s.run.recipe), s.run.recipe.get("normalise", "none")
    (ftr, ytr, t_tr), (fva, yva, t_va) = s.sources("train"), s.sources("val")
    t1 = time.perf_counter()
    fits = {}
    for name in names:
        norm = sources.Normaliser(how, ftr[name])
        out = probe.linear_probe(
            (norm(ftr[name]), ytr),
            (norm(fva[name]), yva),
            s.run.task.num_classes,
            s.run.recipe["c_grid"],
            s.device,
            s.run.recipe["tol"],
            s.run.recipe["max_iter"],
        )
        fits[name] = (out, norm)
    chosen = _first_best({n: f[0]["val_top1"] for n, f in fits.items()})
    out, norm = fits[chosen]
    temperature = _linear_temperature(norm(fva[chosen]), yva, out["train_head"], s.device)
    fit_seconds = time.perf_counter() - t1
    n, extract = len(ytr) + len(yva), t_tr + t_va
    selection = {**out["selection"], "features_cached": extract == 0.0}
    fields, delta, scorer = {}, None, None
    if reads_pooled(s.run.recipe):  # the model, its head the probe's, scores each split
        head = s.model.get_classifier()
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(out["head_weight"]))
            head.bias.copy_(torch.from_numpy(out["head_bias"]))
    else:
        selection.update(_source_record(names, how, {k: f[0]["val_top1"] for k, f in fits.items()}, chosen))
        selection["chosen"] = {"features": chosen, **selection["chosen"]}
        weight, bias = torch.from_numpy(out["head_weight"]), torch.from_numpy(out["head_bias"])

        def scorer(split, task, plan=None, loader=None) -> scoring.Scored:
            # every source in the one pass: the next probe finds them
            feats, _, seconds = s.sources("test", split=split, task=task, plan=plan, loader=loader)
            start, got = time.perf_counter(), scoring.Collect(split, task.scored_classes, temperature)
            for logits in _linear(norm(feats[chosen]), weight, bias, s.device):
                got.add(logits)
            return got.result(seconds + time.perf_counter() - start)

        delta = {"probe.weight": weight, "probe.bias": bias, **norm.tensors()}
        fields = {"params_trainable": weight.numel() + bias.numel(), "params_per_task": weight.numel() + bias.numel()}
    # A probe's training compute is the feature extraction over train+val (the classifier's is negligible).
    return Trained(
        out["val_top1"],
        selection,
        extract + fit_seconds,
        n,
        s.fwd_gflops,
        n / extract if extract > 0 else None,
        delta=delta,
        scorer=scorer,
        temperature=temperature,
        fields=fields,
    )


def _linear(x: np.ndarray, weight, bias, device: torch.device):
    """x @ weight.T + bias (numpy or torch weight and bias), chunk by chunk on the device, in strict fp32."""
    w, b = (torch.as_tensor(a).to(device) for a in (weight, bias))
    for a in range(0, len(x), sources.ROWS):
        with devices.strict_fp32():
            rows = torch.as_tensor(np.asarray(x[a : a + sources.ROWS], dtype=np.float32), device=device)
            logits = rows @ w.T + b
        yield logits


def _linear_temperature(xva: np.ndarray, yva: np.ndarray, train_head: tuple, device: torch.device) -> float | None:
    """T fitted on val's logits under the probe fitted on train alone (`probe.linear_probe`'s train_head: weight,
    bias and the classes it saw; a val image of a class it never saw is left out of the fit)."""
    weight, bias, known = train_head
    sample = scoring.ValLogits(len(yva))
    for logits in _linear(xva, weight, bias, device):
        sample.add(logits)
    return sample.fit(yva, known)


def fewshot_stage(s: Stage) -> Trained:
    """big_vision's few-shot evaluator for one (shots, seed): features of train (cached), k examples per class
    sampled by the run's seed, closed-form ridge regression; each split is scored through its features. Nothing is
    chosen (lambda is fixed) and it gives no probabilities (its scores are regression outputs): no temperature, no
    calibration. A run reads one feature source (runner.plan makes a run per source: without val there is nothing
    to choose one on), normalised with its k-shot sample's statistics."""
    xtr, ytr, extract = s.features("train")
    shots, recipe = int(s.run.recipe["shots"]), s.run.recipe
    counts = np.bincount(ytr)
    short = int(((counts > 0) & (counts < shots)).sum())  # classes with fewer than k examples give all they have
    idx = np.sort(fewshot.indices(ytr, shots, s.run.seed))  # in file order: one pass over memory-mapped features
    start = time.perf_counter()
    sample = xtr[idx]
    norm = sources.Normaliser(recipe.get("normalise", "none"), sample)
    mean, std, w = fewshot.solve(norm(sample), ytr[idx], s.run.task.num_classes, recipe["l2"], s.device)
    solve_seconds = time.perf_counter() - start

    def scorer(split, task, plan=None, loader=None) -> scoring.Scored:
        xte, _, seconds = s.features("test", split=split, task=task, plan=plan, loader=loader)
        start = time.perf_counter()
        top5 = fewshot.predict(norm(xte), mean, std, w, s.device, classes=task.scored_classes)
        return scoring.Scored(top5, None, None, seconds + time.perf_counter() - start)

    selection = {
        "searched": "none (l2 fixed)",
        "l2": recipe["l2"],
        "examples": int(len(idx)),
        "classes_short_of_k": short,
        "features_cached": extract == 0.0,
    }
    if not reads_pooled(recipe):
        selection.update(_source_record(sources.of(recipe), norm.how, {}, sources.of(recipe)[0]))
    delta = {
        "fewshot.weight": torch.from_numpy(w.astype(np.float32)),
        "fewshot.mean": torch.from_numpy(mean.astype(np.float32)),
        "fewshot.std": torch.from_numpy(std.astype(np.float32)),
        **norm.tensors(),
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
        scorer=scorer,
        fields={"shots": shots, "params_trainable": int(w.size), "params_per_task": int(w.size)},
    )


def knn_stage(s: Stage) -> Trained:
    """DINO's weighted k-NN on cached features: train is the memory and val the queries for every k of the recipe
    (the best on val is chosen), then train+val is the memory of each scored split's queries, with the chosen k.
    Nothing trains: what one more task keeps is that memory (its L2-normalised features and labels), the stored
    delta. With several feature sources, every (source, k) is scored on val and the best wins (ties: the source
    listed first, then the smaller k). Its probabilities are the vote's distribution (each class's share), the
    softmax of the log-votes; the temperature is fitted on val's log-votes (memory train, the chosen k)."""
    recipe, classes = s.run.recipe, s.run.task.num_classes
    ks, vote_t = recipe["k"], recipe["temperature"]  # as runner.resolve_recipe checked them
    names, how = sources.of(recipe), recipe.get("normalise", "none")
    (ftr, ytr, t_tr), (fva, yva, t_va) = s.sources("train"), s.sources("val")
    start = time.perf_counter()
    grids, norms, best = {}, {}, None
    for name in names:
        norms[name] = sources.Normaliser(how, ftr[name])
        found = knn.search([(norms[name](ftr[name]), ytr)], norms[name](fva[name]), max(ks), s.device)
        grids[name] = {k: float((knn.top5(*found, k, classes, vote_t)[:, 0] == yva).mean()) for k in ks}
        if best is None or max(grids[name].values()) > max(grids[best[0]].values()):
            best = (name, found)  # the val search of the best source so far (ties: the first listed)
    source, (sims, neighbours) = best
    grid, norm = grids[source], norms[source]
    chosen = knn.choose(grid)
    val = scoring.ValLogits(len(yva))
    for votes in knn.blocks(sims, neighbours, chosen, classes, vote_t):
        val.add(scoring.log_votes(votes))
    temperature = val.fit(yva, floor=scoring.NO_VOTE)  # a val image whose class got no vote does not move T
    del sims, neighbours
    search_seconds = time.perf_counter() - start
    xtr, xva = norm(ftr[source]), norm(fva[source])
    memory = [(xtr, ytr), (xva, yva)]

    def scorer(split, task, plan=None, loader=None) -> scoring.Scored:
        # every source in the one pass: the next probe finds them
        feats, _, seconds = s.sources("test", split=split, task=task, plan=plan, loader=loader)
        start, got = time.perf_counter(), scoring.Collect(split, task.scored_classes, temperature)
        found = knn.search(memory, norm(feats[source]), chosen, s.device)
        for votes in knn.blocks(*found, chosen, classes, vote_t):
            got.add(scoring.log_votes(votes), rank=votes)
        return got.result(seconds + time.perf_counter() - start)

    n, extract = len(ytr) + len(yva), t_tr + t_va
    # the memory as stored: one N x D copy, L2-normalised in place (as F.normalize computes it), not two
    features = torch.from_numpy(np.concatenate([xtr, xva]).astype(np.float32, copy=False))
    features /= features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    selection = {
        "searched": "k (neighbours voting) of DINO's weighted k-NN on L2-normalised features, memory train, "
        "queries val",
        "grid": {str(k): round(a, 6) for k, a in grid.items()},
        "chosen": {"k": chosen},
        "temperature": vote_t,
        "refit": "train+val as the memory of the test queries",
        "memory_images": n,
        "features_cached": extract == 0.0,
    }
    if not reads_pooled(recipe):
        selection.update(_source_record(names, how, {k: max(g.values()) for k, g in grids.items()}, source))
        selection["chosen"] = {"features": source, "k": chosen}
    labels = torch.from_numpy(np.concatenate([ytr, yva]).astype(np.int64))
    delta = {"knn.features": features, "knn.labels": labels, **norm.tensors()}  # with `standard`'s train statistics
    return Trained(
        grid[chosen],
        selection,
        extract + search_seconds,
        n,
        s.fwd_gflops,
        n / extract if extract else None,
        delta=delta,
        scorer=scorer,
        temperature=temperature,
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
    # T: fitted on val with the chosen lr's model as trained on train (finetune.finetune), also where the ViT
    # recipe then retrains on train+val (the retrained model has seen val)
    return Trained(
        out["val_top1"],
        out["selection"],
        seconds,
        out["train_images"],
        gflops,
        out["train_images"] / seconds if seconds else None,
        temperature=out["temperature"],
        fields={
            "micro_batch_size": out["micro_batch_size"],
            "oom_backoffs": out["oom_backoffs"],
            "curves": out["curves"],
        },
    )


def eval_stage(s: Stage) -> Trained:
    """Nothing trains; the checkpoint's own head scores each split. It reads no val: no temperature."""
    return Trained(None, None, 0.0, 0, 0.0, None)


STAGES = {
    "probe": probe_stage,
    "fewshot": fewshot_stage,
    "knn": knn_stage,
    "finetune": finetune_stage,
    "eval": eval_stage,
}
