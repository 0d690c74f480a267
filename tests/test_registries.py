"""Tests that run over the registries, as timm's run over its model registry: every mode on a tiny ViT, every
discovered task. A new mode or task is covered here without a new test."""

import dataclasses

import pytest
import timm
import torch
from conftest import cli, json_lines

from transfer_eval import tasks
from transfer_eval.methods import costs, modes
from transfer_eval.methods.modes import MODES, SELECTORS, STAGE_SPLITS
from transfer_eval.run import runner

TASKS = tasks.discover()


def _tiny_vit(classes=5):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        num_classes=classes,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
    )


CFG = {"input_size": (3, 32, 32)}


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_trains_its_selectors_and_only_them(name):
    mode = MODES[name]
    model = modes.prepare(mode, _tiny_vit(), runner.resolve_recipe(TASKS["digits"], mode))
    picked = modes.matches(mode, model)
    assert set(picked) == set(mode.trains) and all(s in SELECTORS for s in mode.trains)
    names = modes.apply(mode, model)
    assert names == set().union(*picked.values())  # the trainable set is the union over the selectors
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names
    if mode.stage in ("probe", "fewshot"):
        assert names == modes.head_names(model)  # a probe stands for the head
    if names:
        model(torch.randn(2, 3, 32, 32)).float().sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= names  # gradients reach the trainable set only
    if mode.stage == "finetune":
        assert with_grad, "a fine-tuning mode trains something"


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_has_a_cost_card(name, tmp_path):
    from safetensors.torch import save_file

    mode = MODES[name]
    card = costs.cost_card(_tiny_vit(), CFG, mode)
    model = modes.prepare(mode, _tiny_vit())
    modes.apply(mode, model)
    # counted apart from costs.count and trainable_names: what the optimiser is given (requires_grad), every
    # parameter, and the bytes of the trainable tensors as safetensors itself writes them
    trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    assert card["params_per_task"] == sum(p.numel() for p in trainable.values())
    assert card["params_total"] == sum(p.numel() for p in model.parameters())
    if mode.stage in ("probe", "fewshot"):  # the head alone: 32 features x 5 classes, and 5 biases
        assert card["params_per_task"] == 32 * 5 + 5
    if name == "full":
        assert card["params_per_task"] == card["params_total"]
    if trainable and mode.stage != "knn":
        save_file(trainable, str(tmp_path / "delta.safetensors"))
        assert card["bytes_per_task"] == (tmp_path / "delta.safetensors").stat().st_size
    assert card["train_gflops_per_image"] >= (card["fwd_gflops_per_image"] if mode.trains else 0.0)
    if mode.stage == "knn":  # the memory: its size per training image, features and a label
        dim = _tiny_vit().num_features
        assert card["bytes_per_task"] is None and card["bytes_per_train_image"] == 4 * dim + 8
        assert card["stored_per_task"].startswith(mode.stores) and f"{4 * dim + 8:,} bytes" in card["stored_per_task"]
        return
    assert 0 < card["bytes_per_task"] <= card["bytes_full_copy"]
    assert card["stored_per_task"] == mode.stores


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_is_complete_data(name):
    mode = MODES[name]
    assert mode.stage in STAGE_SPLITS and set(mode.splits) <= {"train", "val", "test"} and "test" in mode.splits
    assert isinstance(mode.version, int) and mode.version >= 1
    assert mode.seeds and all(isinstance(s, int) for s in mode.seeds)
    assert mode.description and mode.stores
    assert set(mode.defaults) <= runner.recipe_fields(mode)


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_every_task_has_metadata_and_recipes_for_every_mode(task_name):
    task = TASKS[task_name]
    assert task.num_classes >= 2 and isinstance(task.version, int) and task.version >= 1
    assert task.description and task.data_help and task.source
    assert set(task.splits) <= {"train", "val", "test"} and "test" in task.splits
    if task.val_holdout is not None:
        assert 0 < task.val_holdout["fraction"] < 1 and isinstance(task.val_holdout.get("seed", 0), int)
    if task.classes is not None:
        assert len(task.classes) == task.num_classes
    assert set(task.recipes) <= set(MODES) | {"finetune"}, "a recipe for a mode that does not exist"
    for mode in MODES.values():
        if not set(mode.splits) <= set(task.splits):
            continue
        recipe = runner.resolve_recipe(task, mode)
        assert set(recipe) <= runner.recipe_fields(mode) | {f.name for f in dataclasses.fields(runner.finetune.Recipe)}
        plan = runner.plan([runner.checkpoints.load_registry()["vit_demo"]], [task], [mode])
        assert plan and len({r.key for r in plan}) == len(plan)  # distinct keys, one per shot count and seed


def test_the_cli_lists_every_mode_and_task():
    listed = {r["name"] for r in json_lines(cli("list", "modes", "--json").stdout)}
    assert listed == set(MODES)
    found = {r["name"] for r in json_lines(cli("list", "tasks", "--json").stdout)}
    assert found == set(TASKS)
