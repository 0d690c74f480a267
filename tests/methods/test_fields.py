"""Every recipe field of every mode is declared (methods/fields.py) and checked when runs are planned: over the
registry, a good value passes and bad values (the wrong type, out of range, a list where the field takes none, a
bad item in a list) are refused in one line naming the field and the value. A new field, or a new mode, is covered
here without a new test; a field that no declaration covers fails the first test."""

import math

import pytest
from conftest import assert_one_line_error, cli

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.methods import lora
from transfer_eval.methods.fields import FIELDS, Field, checked_fields
from transfer_eval.methods.modes import MODES
from transfer_eval.run import runner

DIGITS = tasks.discover()["digits"]


def test_every_field_of_every_mode_is_declared_and_every_declaration_is_a_field():
    used = set().union(*(runner.recipe_fields(m) for m in MODES.values()))
    assert sorted(used - set(FIELDS)) == [], "declare these in transfer_eval/methods/fields.py FIELDS"
    assert sorted(set(FIELDS) - used) == [], "no mode has these fields"


def _one(spec: Field, good):
    """One good value of the field: `good`, or its first item, or (None, an empty list) one the declaration takes."""
    if isinstance(good, list) and good:
        return good[0]
    if good is not None and not isinstance(good, list):
        return good
    if spec.kind in (int, float):
        return (spec.low or 0) + 1 if spec.high is None else (spec.low + spec.high) / 2
    return True if spec.kind is bool else spec.choices[0] if spec.choices else "text"


def _bad_values(spec: Field, good) -> list:
    """Values the declaration refuses, made from it and a good value of the field."""
    one = _one(spec, good)
    items = [{"a": 1}]  # never a value
    if spec.kind in (int, float):
        items += ["abc", True, math.nan, math.inf]
    if spec.kind is int:
        items.append(one + 0.5)
    if spec.kind in (bool, str):
        items.append(3)
    if spec.kind is bool:
        items.append("abc")
    if spec.choices or spec.valid:
        items.append("nonsense")
    if spec.low is not None:
        items.append(spec.low if spec.low_open else spec.low - 1)
    if spec.high is not None:
        items.append(spec.high if spec.high_open else spec.high + 1)
    if spec.shape == "one":
        return items + [[one, one]] + ([] if spec.null else [None])  # a list where the field takes one value
    lists = [[one, bad] for bad in items]  # one bad item in a list
    if spec.shape == "grid":
        return items + lists + [[]]
    if spec.shape == "list":
        return lists + [one] + ([] if spec.empty else [[]])  # one value where the field takes a list only
    return lists + [one, [one], [good[1], good[0]], [one, one, one]]  # pair: two values, the first no larger


def _fields_of_every_mode():
    for mode in MODES.values():
        recipe = runner.resolve_recipe(DIGITS, mode)
        for name in sorted(runner.recipe_fields(mode)):
            yield mode, name, recipe.get(name, mode.optional.get(name))


@pytest.mark.parametrize("mode_name", sorted(MODES))
def test_a_good_value_passes_and_bad_ones_are_one_line_naming_the_field_and_value(mode_name):
    tried = 0
    for mode, name, good in _fields_of_every_mode():
        if mode.name != mode_name:
            continue
        assert runner.resolve_recipe(DIGITS, mode, {name: good}).get(name, good) == good, name
        spec = FIELDS[name]
        if spec.shape in ("grid", "list"):
            runner.resolve_recipe(DIGITS, mode, {name: [_one(spec, good)]})  # a list of one good value
        assert good is not None or spec.null, f"{mode.name} {name}: its default, None, is not declared allowed"
        for bad in _bad_values(spec, good):
            with pytest.raises(UserError) as refused:
                runner.resolve_recipe(DIGITS, mode, {name: bad})
            message = str(refused.value)
            assert "\n" not in message and message.startswith(f"{name} must be ") and f"got {bad!r}" in message, (
                mode.name,
                name,
                bad,
                message,
            )
            assert spec.allowed() in message
            tried += 1
    assert tried > 0


def test_text_spelling_a_number_is_the_number_and_an_integer_stays_an_integer():
    assert checked_fields({"lr": "1e-3", "steps": "2e3", "lr_grid": ["1e-3", 0.01]}) == {
        "lr": 0.001,
        "steps": 2000,
        "lr_grid": [0.001, 0.01],
    }
    kept = checked_fields({"weight_decay": 0, "lr": 1})  # as a task wrote them: run keys stay as they were
    assert kept == {"weight_decay": 0, "lr": 1} and all(type(v) is int for v in kept.values())
    with pytest.raises(UserError, match=r"^steps must be a positive integer; got '2\.5e0'$"):
        checked_fields({"steps": "2.5e0"})


def test_the_peft_checks_use_the_declarations():
    with pytest.raises(UserError, match=r"^lora_rank must be a positive integer; got 0$"):
        lora.check({**lora.DEFAULTS, "lora_rank": 0})
    assert lora.TARGETS == FIELDS["lora_targets"].choices
    lora.check(dict(lora.DEFAULTS), width=128)


@pytest.mark.parametrize("setting", ["lr_grid=abc", "steps=abc", "lr=high", "lr_grid=[0.01,x]"])
def test_a_bad_field_stops_run_before_anything_is_created(tmp_path, setting):
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    proc = cli("run", "-c", "vit_demo", "-t", "digits", "-m", "attention", "--set", setting, cwd=work,
               env={"TRANSFER_EVAL_CACHE": str(cache)})  # fmt: skip
    name, value = setting.split("=")
    assert_one_line_error(proc, f"{name} must be ", "got ")
    assert list(work.iterdir()) == [] and not cache.exists()  # no store file, no cache entry or folder
