"""Every recipe field of every mode, declared once: its type, its range, and whether it takes a list (a grid chosen
on val, or one run per value). `checked_fields` refuses a bad value in one line naming the field, the value and what is
allowed, when runs are planned (`runner.resolve_recipe`), before anything is created; `cost` and `make_recipe`
check through it too.

A new recipe field is one entry of FIELDS beside its default (a mode's `defaults`, `finetune.Recipe`); the
registry tests (tests/methods/test_fields.py) then try a good and bad values of it in every mode that has it, and
fail for a field of a mode that FIELDS does not declare. What needs more than the value itself (a LoRA rank above
the model's width, a library a setting needs) stays the mode's `check` or its `prepare`.

YAML (`--set`, paper presets) reads `1e-3` as text: a number field takes such text as the number it spells. An
integer given to a number field stays an integer, so that recipes (and so run keys) are as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from transfer_eval.errors import UserError
from transfer_eval.methods import presets, sources

SHAPES = ("one", "grid", "list", "pair")


@dataclass(frozen=True)
class Field:
    """What one recipe field takes. `kind`: the type of each value (int, float, bool or str; an integer is also a
    float's value). `low`/`high`: the range of a number, each end closed unless `low_open`/`high_open`.
    `shape`: "one" value; "grid": one value or a list of them (a choice on val, or a run each); "list": a list only
    (`empty`: it may be empty); "pair": two values, the first no larger. `null`: None is allowed (unset: the
    checkpoint's own, or off). `choices`, or `valid` (a test of one value) with `about` (what it lets through),
    narrow text further."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    shape: str = "one"
    empty: bool = False
    null: bool = False
    choices: tuple = ()
    valid: Callable[[object], bool] | None = None
    about: str = ""

    def __post_init__(self):
        if self.kind not in (int, float, bool, str) or self.shape not in SHAPES:
            raise ValueError(f"a field is an int, float, bool or str, shaped {', '.join(SHAPES)}")

    def allowed(self) -> str:
        """What the field takes, in words: the end of its error line."""
        one = self._one()
        text = {
            "one": one,
            "grid": f"{one}, or a list of them",
            "list": f"a list, each {one}" + (" (or an empty list)" if self.empty else ""),
            "pair": f"a pair [low, high], each {one}, low <= high",
        }[self.shape]
        return text + (", or null" if self.null else "")

    def _one(self) -> str:
        if self.about:
            return self.about
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "text"
        noun = "an integer" if self.kind is int else "a number"
        if self.low == 0 and self.low_open and self.high is None:
            return f"a positive {'integer' if self.kind is int else 'number'}"
        if self.kind is int and self.low == 1 and self.high is None:
            return "a positive integer"
        if self.high is None:
            return noun if self.low is None else f"{noun}, {self.low:g} or more"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{noun} in {left}{self.low:g}, {self.high:g}{right}"

    def value(self, v):
        """One value as the field keeps it (text spelling a number: the number), or raises ValueError."""
        if self.kind in (int, float) and isinstance(v, str):
            v = _number(v, self.kind)
        if isinstance(v, bool) and self.kind is not bool:
            raise ValueError(v)
        if self.kind is int and not isinstance(v, int):
            raise ValueError(v)
        if self.kind is float and not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(v)
        if self.kind in (bool, str) and not isinstance(v, self.kind):
            raise ValueError(v)
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            raise ValueError(v)
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            raise ValueError(v)
        if (self.choices and v not in self.choices) or (self.valid is not None and not self.valid(v)):
            raise ValueError(v)
        return v

    def check(self, name: str, v):
        """`v` as the field keeps it; a bad value raises UserError, one line."""
        try:
            if v is None and self.null:
                return v
            if self.shape == "one" or (self.shape == "grid" and not isinstance(v, (list, tuple))):
                return self.value(v)
            if not isinstance(v, (list, tuple)) or (not v and not self.empty):
                raise ValueError(v)
            out = [self.value(x) for x in v]
            if self.shape == "pair" and (len(out) != 2 or out[0] > out[1]):
                raise ValueError(v)
            return out
        except (ValueError, TypeError):
            raise UserError(f"{name} must be {self.allowed()}; got {v!r}") from None


def _number(text: str, kind: type):
    try:
        x = float(text)
    except ValueError:
        raise ValueError(text) from None
    if kind is int:
        if not (math.isfinite(x) and x.is_integer()):
            raise ValueError(text)
        return int(x)
    return x


def _fits(parse: Callable) -> Callable[[object], bool]:
    """A parser that raises UserError on a bad value (the feature sources' own), as a test of one value."""

    def test(v) -> bool:
        try:
            parse(v)
        except UserError:
            return False
        return True

    return test


POSITIVE = Field(float, low=0, low_open=True)
COUNT = Field(int, low=1)
SIZE = Field(int, low=1, null=True)  # an input size, or None: the checkpoint's own
FRACTION = Field(float, low=0, high=1)
RATE = Field(float, low=0, high=1, high_open=True)  # dropout, label smoothing: 1 would leave nothing
AT_LEAST_0 = Field(float, low=0)

FIELDS: dict[str, Field] = {
    # finetune.Recipe: every fine-tuning mode's
    "preset": Field(str, choices=tuple(presets.PRESETS)),
    "preset_version": COUNT,
    "optimizer": Field(str, choices=("sgd", "adamw")),
    "lr": POSITIVE,
    "lr_grid": Field(float, low=0, low_open=True, shape="list", empty=True),
    "retrain": Field(bool),
    "momentum": RATE,
    "weight_decay": AT_LEAST_0,
    "batch_size": COUNT,  # the probes' too: the images of one forward pass
    "micro_batch_size": Field(int, low=1, null=True),
    "steps": COUNT,
    "warmup_steps": Field(int, low=0),
    "grad_clip": Field(float, low=0, low_open=True, null=True),
    "label_smoothing": RATE,
    "augment": Field(bool),
    "hflip": FRACTION,
    "crop_scale": Field(float, low=0, high=1, low_open=True, shape="pair"),
    "randaugment": Field(str, null=True, about="a timm augmentation spec (rand-m9-mstd0.5-inc1)"),
    "random_erasing": FRACTION,
    "mixup": AT_LEAST_0,
    "cutmix": AT_LEAST_0,
    "drop_path": RATE,
    "lora_rank": COUNT,
    "lora_alpha": POSITIVE,
    "eval_batch_size": COUNT,
    "resolution": SIZE,
    # the probes (linear, fewshot, knn) and pretrained
    "c_grid": Field(float, low=0, low_open=True, shape="list"),
    "tol": POSITIVE,
    "max_iter": COUNT,
    "shots": Field(int, low=1, shape="grid"),
    "l2": POSITIVE,
    "k": Field(int, low=1, shape="grid"),
    "temperature": POSITIVE,
    "features": Field(str, shape="grid", valid=_fits(sources.parse), about=sources.HELP),
    "normalise": Field(str, valid=_fits(sources.normalisation), about=f"one of {', '.join(sources.NORMALISE)}"),
    # the parameter-efficient modes' own
    "prompt_tokens": COUNT,
    "adapter_bottleneck": COUNT,
    "adaptformer_bottleneck": COUNT,
    "adaptformer_scale": Field(float),
    "lora_targets": Field(str, choices=("qv", "qkv", "attention")),  # lora.TARGETS: q and v slices, fused qkv, +proj
    "lora_dropout": RATE,
}


def checked_fields(recipe: dict) -> dict:
    """The recipe with each field checked against FIELDS (text spelling a number read as the number); the first
    bad value raises UserError, one line. A field FIELDS does not declare is a mistake of the suite's."""
    out = dict(recipe)
    for name, value in recipe.items():
        if name not in FIELDS:
            raise KeyError(f"recipe field {name} is not declared in transfer_eval/methods/fields.py")
        out[name] = FIELDS[name].check(name, value)
    return out
