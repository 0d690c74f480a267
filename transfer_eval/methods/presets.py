"""Named, versioned fine-tuning recipe presets (`--recipe vit|deit|vtab`) and how a run's recipe is assembled from
a preset and a task's fields."""

from __future__ import annotations

from transfer_eval.errors import UserError

# The `vtab` preset, per fine-tuning mode: what it does with drop path and the backbone's train or eval mode, and whose
# setting that is. The vtab1k-noah paper preset's choices carry each sentence (tests/methods/test_seeding.py).
_VPT = (
    "vpt_shallow and vpt_deep: drop path 0.1, the frozen backbone in train mode (NOAH's setting for its VPT rows); "
    "VPT's own code keeps the frozen backbone in eval mode, which on a timm ViT (no batch norm, its dropouts at 0) is "
    "drop path 0: `--set drop_path=0`."
)
VTAB_MODES = {
    "full": "full: drop path 0.1, the whole model in train mode (NOAH's setting, which this preset gives every mode).",
    "attention": "attention: drop path 0.1, the whole model in train mode (NOAH's setting).",
    "ffn": "ffn: drop path 0.1, the whole model in train mode (NOAH's setting).",
    "bitfit": "bitfit: drop path 0.1, the whole model in train mode (NOAH's setting).",
    "vpt_shallow": _VPT,
    "vpt_deep": _VPT,
    "adapter": "adapter: drop path 0.1, the frozen backbone in train mode (NOAH's own setting for its Adapter row).",
    "adaptformer": "adaptformer: drop path 0.1, the frozen backbone in train mode (NOAH's setting, and V-PETL Bench's "
    "for its VTAB-1k AdaptFormer runs); AdaptFormer's own scripts train with drop path 0.",
    "lora": "lora: drop path 0.1, the frozen backbone in train mode (NOAH's own setting for its LoRA row).",
    "ssf": "ssf: drop path 0.1, the frozen backbone in train mode (NOAH's setting); SSF's own VTAB-1k scripts set drop "
    "path per task (0 on 9 tasks, 0.1 on 6, 0.2 on 4).",
}

# Named, versioned presets. A task's recipe adapts the `vit` preset to its dataset (steps, warmup, lr grid); with
# another preset only the task's schedule fields carry over (SCHEDULE_FIELDS), the optimiser comes from the preset.
PRESETS = {
    "vit": {
        "about": "ViT paper fine-tuning (Table 4, App. B.1.1; big_vision transfer.py): SGD momentum 0.9, batch 512, "
        "no weight decay, clip at global norm 1, 500 warmup steps then cosine, zero-init head, lr chosen "
        "on held-out train data from {0.001, 0.003, 0.01, 0.03}, then retrained on all of train",
        "fields": {
            "preset": "vit",
            "preset_version": 1,
            "optimizer": "sgd",
            "momentum": 0.9,
            "weight_decay": 0.0,
            "batch_size": 512,
            "grad_clip": 1.0,
            "warmup_steps": 500,
            "lr": 0.01,
            "lr_grid": [0.001, 0.003, 0.01, 0.03],
            "retrain": True,
            "augment": True,
            "hflip": 0.5,
            "crop_scale": [0.05, 1.0],
        },
    },
    "deit": {
        "about": "DeiT / DeiT III fine-tuning as facebookresearch/deit main.py sets it: AdamW lr 5e-4 x batch/512, "
        "weight decay 0.05, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, mixup 0.8, cutmix 1.0, "
        "random erasing 0.25, stochastic depth 0.1, cosine after warmup; no lr search",
        "lr_per_512": 5e-4,  # DeiT's linear scaling rule: lr = 5e-4 x batch / 512, unless lr is set
        "fields": {
            "preset": "deit",
            "preset_version": 2,
            "optimizer": "adamw",
            "lr": 5e-4,
            "lr_grid": [],
            "weight_decay": 0.05,
            "batch_size": 512,
            "grad_clip": None,
            "label_smoothing": 0.1,
            "randaugment": "rand-m9-mstd0.5-inc1",
            "random_erasing": 0.25,
            "mixup": 0.8,
            "cutmix": 1.0,
            "drop_path": 0.1,
            "retrain": False,
            "augment": True,
            "hflip": 0.5,
            "crop_scale": [0.08, 1.0],
        },
    },
    "vtab": {
        "about": "VTAB-1k as the parameter-efficient transfer papers fine-tune (NOAH, FacT; VPT and SSF alike in "
        "kind): AdamW, weight decay 1e-4, batch 64, 10 epochs of warm-up then cosine over 100 epochs of the "
        "1,000 images, stochastic depth 0.1, no augmentation, no label smoothing; lr chosen on val200 from "
        "{3e-4, 1e-3, 3e-3} (NOAH and FacT fix 1e-3), then retrained on train800val200. Every mode trains with "
        "drop path 0.1 and the whole model, frozen backbone included, in train mode: NOAH's setting for every row "
        "of its table (VTAB_MODES says, per mode, whose setting that is and where the method's own code differs)",
        "modes": VTAB_MODES,
        "fields": {
            "preset": "vtab",
            "preset_version": 1,
            "optimizer": "adamw",
            "lr": 1e-3,
            "lr_grid": [3e-4, 1e-3, 3e-3],
            "weight_decay": 1e-4,
            "batch_size": 64,
            "grad_clip": None,
            "steps": 1563,
            "warmup_steps": 156,
            "drop_path": 0.1,
            "retrain": True,
            "augment": False,
        },
    },
}
# `--recipe paper`: the probes (linear, knn, fewshot) read the features and normalisation the checkpoint's own paper
# probed (the registry's `probe` field; runner.plan); fine-tuning keeps the task's preset.
PAPER = "paper"
SCHEDULE_FIELDS = {
    "steps",
    "warmup_steps",
    "batch_size",
    "micro_batch_size",
    "augment",
    "hflip",
    "crop_scale",
    "eval_batch_size",
    "resolution",
}


def preset_fields(name: str, task_fields: dict) -> dict:
    """The preset's fields under the task's: all of them for `vit`, only schedule fields for another preset.
    A task names its own protocol's preset with `"preset": ...` in its recipe (VTAB-1k's `vtab`): the runner's
    default (runner.resolve_recipe); another preset chosen on purpose takes only the task's schedule."""
    own = task_fields.get("preset")
    if name not in PRESETS:
        raise UserError(f"unknown recipe preset {name!r}; known: {', '.join(PRESETS)}")
    base = dict(PRESETS[name]["fields"])
    if name == "vit" and own in (None, "vit"):
        return {**base, **task_fields}
    return {**base, **{k: v for k, v in task_fields.items() if k in SCHEDULE_FIELDS}}


def scale_lr(preset: str, fields: dict, overrides: dict) -> dict:
    """A preset with a linear scaling rule (deit) sets lr from the batch size, unless the user set lr."""
    per_512 = PRESETS.get(preset, {}).get("lr_per_512")
    if per_512 is None or "lr" in overrides:
        return fields
    return {**fields, "lr": per_512 * int(fields["batch_size"]) / 512}
