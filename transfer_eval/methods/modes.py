"""Adaptation modes, as data: what trains (selectors), which stage runs it, its recipe defaults, its seeds, its
protocol version and the splits it reads. A new mode is one entry of MODES and nothing else.

Attention-only follows the reference code of "Three things everyone should know about Vision Transformers"
(DeiT's `--attn-only`): every parameter of the attention layers (qkv and proj of each MHSA, plus any bias
or position table they own), the classifier head and the position embedding train; the patch embedding, class
token, norms, layer scales and MLPs stay frozen. Unlike the reference code, which matches the name '.attn.' and
so trains only the first branch of a parallel block (whose second attention is named 'attn1'), attention
modules are found by type, so every branch of a parallel block trains, as the paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from transfer_eval.errors import unknown_name
from transfer_eval.methods import bottlenecks, fewshot, knn, logistic, lora, probe, prompts, sources, ssf

# --------------------------------------------------------------------------------------------------- selectors


def _is_attention(module: nn.Module) -> bool:
    cls = type(module).__name__
    return "Attention" in cls and "Pool" not in cls  # timm's Attention, EvaAttention, RelPosAttention, ...


def _is_mlp(module: nn.Module) -> bool:
    cls = type(module).__name__
    return "Mlp" in cls or "GLU" in cls.upper()  # timm's Mlp, GluMlp, SwiGLU, SwiGLUPacked


def _is_norm(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d))
        or "Norm" in type(module).__name__
    )


def _module_params(model: nn.Module, select) -> set[str]:
    """Parameters of the modules `select` picks (outermost match), excluding norms inside them."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        if not select(module):
            continue
        frozen = {id(p) for sub in module.modules() if _is_norm(sub) for p in sub.parameters()}
        for p_name, p in module.named_parameters():
            if id(p) not in frozen:
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def _names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def head_names(model: nn.Module) -> set[str]:
    ids = {id(p) for p in model.get_classifier().parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def attention_names(model: nn.Module) -> set[str]:
    """Parameters of every attention module, excluding norms inside them (q/k norm, sub-LN)."""
    return _module_params(model, _is_attention)


def mlp_names(model: nn.Module) -> set[str]:
    return _module_params(model, _is_mlp)


@dataclass(frozen=True)
class Selector:
    """One rule picking parameters by module type or name. `required`: the mode does not apply to a model where
    it matches nothing (the message says why)."""

    name: str
    description: str
    pick: Callable[[nn.Module], set[str]]
    required: str | None = None


SELECTORS = {
    s.name: s
    for s in (
        Selector("all", "every parameter", _names),
        Selector("head", "the classifier head (timm's get_classifier())", head_names),
        Selector(
            "pos_embed",
            "the position embedding (parameters named pos_embed)",
            lambda m: {n for n in _names(m) if n.split(".")[-1] == "pos_embed"},
        ),
        Selector(
            "attention",
            "every attention module, found by type (every branch of a parallel block), norms inside excluded",
            attention_names,
            "{model} has no attention modules; {mode} does not apply",
        ),
        Selector(
            "mlp",
            "every MLP / FFN module, found by type, norms inside excluded",
            mlp_names,
            "{model} has no MLP modules; {mode} does not apply",
        ),
        Selector("bias", "every parameter named *bias", lambda m: {n for n in _names(m) if n.endswith("bias")}),
        Selector(
            "prompts",
            "VPT's prompt tokens (blocks.prompts: one set, or one per block when deep)",
            prompts.prompt_names,
            "call modes.prepare first: {model} has no VPT prompts",
        ),
        Selector(
            "adapter",
            "NOAH's serial bottleneck adapters after each block's MLP (blocks.N.adapter)",
            bottlenecks.adapter_names,
            "call modes.prepare first: {model} has no adapters",
        ),
        Selector(
            "adaptformer",
            "AdaptFormer's parallel bottlenecks beside each block's MLP (blocks.N.adaptformer)",
            bottlenecks.adaptformer_names,
            "call modes.prepare first: {model} has no AdaptFormer bottlenecks",
        ),
        Selector(
            "lora",
            "LoRA's adapters (lora_A, lora_B of peft; lora_q_A ... of the q and v slices)",
            lambda m: {n for n in _names(m) if ".lora_" in n},
            "call modes.prepare first: {model} has no LoRA adapters",
        ),
        Selector(
            "ssf",
            "SSF's scales and shifts (ssf_scale, ssf_shift)",
            ssf.names,
            "call modes.prepare first: {model} has no SSF scales and shifts",
        ),
    )
}

# ------------------------------------------------------------------------------------------------------ modes

STAGES = ("probe", "fewshot", "knn", "finetune", "eval")
STAGE_SPLITS = {
    "probe": ("train", "val", "test"),
    "fewshot": ("train", "test"),
    "knn": ("train", "val", "test"),
    "finetune": ("train", "val", "test"),
    "eval": ("test",),
}
# VPT's prompt length is chosen per task (a preset may set it per task): KMnP/vpt's config default is 5, its demo
# runs 5, 10, 50 and 100 (SUN397 5, DMLab and EuroSAT 100). 10 sits among the small values: a useful number of
# tokens that adds only ~5% to ViT-B/16's 197 tokens (the extra inference cost a deployed task pays for every
# image), 7,680 parameters shallow and 92,160 deep on ViT-B.
VPT_DEFAULTS = {"prompt_tokens": 10}


@dataclass(frozen=True)
class Mode:
    """One adaptation mode. `trains` names SELECTORS (the trainable set is their union); `stage` is what the
    runner does (probe: a classifier on frozen features; fewshot: closed-form regression on k per class; knn:
    weighted k-NN on frozen features; finetune: gradient training; eval: nothing trains); `defaults` are the
    mode's own recipe fields (a probe's whole recipe; for fine-tuning, fields beyond finetune.Recipe's common
    ones); `version` enters every protocol hash: bump it when the mode's code changes in a way that can move
    accuracy."""

    name: str
    stage: str
    trains: tuple[str, ...]
    description: str
    stores: str  # what one more task costs in storage when the backbone is shared
    version: int = 1
    defaults: dict = field(default_factory=dict, hash=False, compare=False)
    seeds: tuple[int, ...] = (0,)  # the seeds run when a user names none
    splits: tuple[str, ...] = ()  # the splits a run reads; () takes the stage's
    # structural change before training (LoRA's adapters): (model, recipe, the run's seed) -> model; every new tensor
    # drawn from a generator seeded from the seed, the mode and its name (methods/seeding.py)
    prepare: Callable[[nn.Module, dict, int], nn.Module] | None = None
    # folds the method's own parameters into the backbone's weights, in place, once training is done (SSF, LoRA):
    # evaluation, inference and the deployed task's cost then run the backbone's arithmetic; returns the model
    merge: Callable[[nn.Module], nn.Module] | None = None
    # what the declarations of its recipe fields (methods/fields.py: type, range, list) cannot say, checked when
    # runs are planned (a library a setting needs): raises UserError, one line, before anything runs
    check: Callable[[dict], None] | None = None
    # recipe fields a run may set beyond `defaults` (the probes' feature source and normalisation), with their
    # defaults: a field at its default stays out of the resolved recipe, so runs from before it keep their keys
    optional: dict = field(default_factory=dict, hash=False, compare=False)
    needs: str = ""  # an optional library the mode (or some of its settings) needs, as `list modes` shows it

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"mode {self.name}: stage {self.stage!r} is not one of {', '.join(STAGES)}")
        unknown = [s for s in self.trains if s not in SELECTORS]
        if unknown:
            raise ValueError(f"mode {self.name}: unknown selector(s) {', '.join(unknown)}")
        if not self.splits:
            object.__setattr__(self, "splits", STAGE_SPLITS[self.stage])

    @property
    def kind(self) -> str:  # the name `list modes --json` has printed since the first release
        return self.stage


_PROBE = {
    "batch_size": 256,
    "c_grid": list(probe.COARSE_C),
    "tol": logistic.TOL,
    "max_iter": logistic.MAX_ITER,
    "resolution": None,
}
_FEWSHOT = {"batch_size": 256, "shots": list(fewshot.SHOTS), "l2": fewshot.L2, "resolution": None}
_KNN = {"batch_size": 256, "k": [knn.K], "temperature": knn.TEMPERATURE, "resolution": None}
_EVAL = {"batch_size": 256, "resolution": None}

MODES = {
    m.name: m
    for m in (
        # linear 2: the torch L-BFGS solver run to convergence (tol, max_iter) in place of scikit-learn's capped fits.
        Mode(
            "linear",
            "probe",
            ("head",),
            "frozen backbone; multinomial logistic regression on pre-logits features, L2 strength chosen on val",
            "the head",
            version=2,
            defaults=_PROBE,
            optional=sources.FIELDS,
        ),
        Mode(
            "attention",
            "finetune",
            ("attention", "pos_embed", "head"),
            "fine-tune only the attention layers (qkv, proj), the position embedding and the head",
            "MHSA + position embedding + head",
        ),
        Mode(
            "fewshot",
            "fewshot",
            ("head",),
            "frozen backbone; closed-form ridge regression on k examples per class (Scaling ViT, big_vision): "
            "k in 1, 5, 10, 25, three sampling seeds",
            "the regression weights",
            defaults=_FEWSHOT,
            optional=sources.FIELDS,
            seeds=(0, 1, 2),
        ),  # big_vision's three sampling seeds
        Mode(
            "knn",
            "knn",
            (),
            "frozen backbone; weighted k-NN on L2-normalised pre-logits features (DINO, DINOv2): the k most similar "
            "train images vote with exp(cosine / T); k 20 and T 0.07 unless the recipe says (a list of k: the "
            "best on val)",
            "the k-NN memory: train+val features and labels",
            defaults=_KNN,
            optional=sources.FIELDS,
        ),
        Mode("full", "finetune", ("all",), "fine-tune every parameter", "every parameter"),
        Mode(
            "ffn",
            "finetune",
            ("mlp", "pos_embed", "head"),
            "fine-tune only the MLP (FFN) layers, the position embedding and the head (the control of 'Three things')",
            "MLPs + position embedding + head",
        ),
        Mode(
            "bitfit", "finetune", ("bias", "head"), "fine-tune only the biases and the head (BitFit)", "biases + head"
        ),
        # VPT, Adapter, AdaptFormer (methods/prompts.py, methods/bottlenecks.py): their fields are declared in
        # methods/fields.py (a whole number, 1 or more), checked when runs are planned; a bottleneck wider than the
        # model, and an architecture that is not a timm VisionTransformer, are refused by `prepare`, which the
        # runner's preflight calls on the meta device before the first run.
        # Version 2 of vpt_shallow, vpt_deep, adapter, adaptformer, lora 3 and ssf 2: their new tensors are drawn
        # from generators seeded by the run's seed, the mode and the tensor's name (version 1 drew the prompts and
        # bottlenecks from seed 0 whatever the run's seed, and SSF's and LoRA's from torch's global generator,
        # whatever ran before in the process). ssf 2 also places the final scale and shift of a mean-pooled model
        # before its pooling, as SSF's code does.
        Mode(
            "vpt_shallow",
            "finetune",
            ("prompts", "head"),
            "VPT-shallow: prompt_tokens learnable tokens after the class (and register) tokens at the input, no "
            "position embedding, dropout 0.1; the backbone frozen; the head reads what it reads without prompts",
            "the prompts + head",
            version=2,
            defaults=VPT_DEFAULTS,
            prepare=prompts.shallow,
        ),
        Mode(
            "vpt_deep",
            "finetune",
            ("prompts", "head"),
            "VPT-deep: as vpt_shallow, and before every later block the prompt outputs replaced by that block's own "
            "prompt_tokens tokens (one set per block)",
            "one prompt set per block + head",
            version=2,
            defaults=VPT_DEFAULTS,
            prepare=prompts.deep,
        ),
        Mode(
            "adapter",
            "finetune",
            ("adapter", "head"),
            "NOAH's Adapter: a serial bottleneck (adapter_bottleneck, QuickGELU, Xavier init) on each block's MLP "
            "output before the residual add; the backbone frozen",
            "the adapters + head",
            version=2,
            defaults={"adapter_bottleneck": 8},  # NOAH's VTAB setting (experiments/Adapter/ViT-B_prompt_adapter_8)
            prepare=bottlenecks.adapter,
        ),
        Mode(
            "adaptformer",
            "finetune",
            ("adaptformer", "head"),
            "AdaptFormer: a parallel bottleneck (adaptformer_bottleneck, ReLU) beside each block's MLP, scaled by "
            "adaptformer_scale, its up projection zero-initialised (step 0 is the backbone); the backbone frozen; "
            "its scripts' BatchNorm before the head (a linear-probing hack, not in the VTAB-1k runs) left out",
            "the bottlenecks + head",
            version=2,
            defaults={"adaptformer_bottleneck": 8, "adaptformer_scale": 0.1},  # the VTAB tables' h; the paper's s
            prepare=bottlenecks.adaptformer,
        ),
        # lora 2: the LoRA paper's and the VTAB papers' LoRA by default (q and v slices, scale 1), merged for test;
        # lora 3: seeded A (above)
        Mode(
            "lora",
            "finetune",
            ("lora", "head"),
            "LoRA: rank-8 updates of the q and v slices of each fused qkv, scale 1 (lora_targets qv; qkv: one pair "
            "on the fused qkv as NOAH; attention: qkv and proj), and the head; merged into the weights for test",
            "the adapters + head",
            version=3,
            defaults=lora.DEFAULTS,
            prepare=lora.prepare,
            merge=lora.merge,
            check=lora.check,
            needs="peft (lora_targets qkv, attention)",
        ),
        Mode(
            "ssf",
            "finetune",
            ("ssf", "head"),
            "SSF: a scale and a shift after every norm, qkv, proj, fc1, fc2, the patch embedding and the final norm "
            "(before the pooling, as SSF's code), and the head; merged into the weights for test",
            "the scales and shifts + head",
            version=2,
            prepare=ssf.prepare,
            merge=ssf.merge,
        ),
        Mode(
            "pretrained",
            "eval",
            (),
            "no training: the checkpoint's own classifier as it is (an ImageNet-1k head on ImageNet-v2)",
            "nothing",
            defaults=_EVAL,
        ),
    )
}


def resolve(name: str) -> Mode:
    if name not in MODES:
        raise unknown_name("mode", name, MODES, hint="(see `transfer-eval list modes`)")
    return MODES[name]


def matches(mode: Mode, model: nn.Module) -> dict[str, set[str]]:
    """What each of the mode's selectors picks on this model; a required selector that picks nothing raises."""
    out = {}
    for s in (SELECTORS[n] for n in mode.trains):
        picked = s.pick(model)
        if s.required and not picked:
            raise ValueError(s.required.format(model=type(model).__name__, mode=mode.name))
        out[s.name] = picked
    return out


def trainable_names(mode: Mode, model: nn.Module) -> set[str]:
    """Parameter names that train in `mode`: the union over its selectors (for a probe, the head that the
    classifier stands for)."""
    return set().union(*matches(mode, model).values())


def prepare(mode: Mode, model: nn.Module, recipe: dict | None = None, seed: int = 0) -> nn.Module:
    """Change the model's structure where the mode needs it (LoRA's adapters), with the mode's defaults under
    the recipe's fields; its new tensors start where the run of `seed` starts them (a run passes its own seed;
    where the tensors are loaded or only counted afterwards, any seed does)."""
    return model if mode.prepare is None else mode.prepare(model, {**mode.defaults, **(recipe or {})}, seed)


def merge(mode: Mode, model: nn.Module) -> nn.Module:
    """The model with the mode's parameters folded into its weights where the mode merges (else as it is)."""
    return model if mode.merge is None else mode.merge(model)


def apply(mode: Mode, model: nn.Module) -> set[str]:
    """Freeze everything outside the mode's trainable set; returns that set."""
    names = trainable_names(mode, model)
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return names
