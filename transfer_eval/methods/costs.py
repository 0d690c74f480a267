"""Compute and parameter-sharing cost, measured: FLOPs counted on real passes, bytes from a real safetensors file
(transfer_eval.methods.deltas); peak memory is read by devices.PeakMemory.

Convention: 1 multiply-add = 2 FLOPs (torch.utils.flop_counter's, and Scaling-ViT's: ViT-B/16 at 224 px is 35.1
GFLOPs). GMACs = GFLOPs / 2 is the unit of the DeiT and timm tables (17.6 for ViT-B/16).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def _explicit_attention(model):
    """Count attention as the matmuls it is: the flop counter misses some fused SDPA kernels (0 FLOPs on CPU)."""
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in fused:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, f in fused:
            m.fused_attn = f


def _example(model, data_config: dict, batch: int, device) -> torch.Tensor:
    c, h, w = data_config["input_size"]
    return torch.randn(batch, c, h, w, device=device)


def forward_flops(model, data_config: dict, device) -> float:
    """FLOPs of one image's forward pass (inference: no autograd)."""
    was_training = model.training
    model.eval()
    x = _example(model, data_config, 1, device)
    with _explicit_attention(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return float(counter.get_total_flops())


def train_step_flops(model, data_config: dict, device) -> float:
    """FLOPs of one image's training step (forward + backward) with the mode's frozen parameters frozen.

    Frozen layers get no weight gradient, so autograd skips those matmuls and the count shows it; input
    gradients still flow back down to the lowest trainable parameter.
    """
    if not any(p.requires_grad for p in model.parameters()):
        return 0.0
    was_training = model.training
    model.train()
    x = _example(model, data_config, 1, device)
    with _explicit_attention(model), FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    return float(counter.get_total_flops())


def count(model, names=None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if names is None or n in names)


def cost_card(model, data_config: dict, mode, device=torch.device("cpu"), recipe: dict | None = None) -> dict:
    """Compute and sharing figures of a mode on a built model, without data: what `transfer-eval cost` prints.
    The model is adapted as a run adapts it (the mode's structural fields: its defaults under `recipe`) on a copy,
    so one built model serves every mode. Trainable parameters are counted for the backbone and the head apart;
    the deployed task's forward FLOPs are counted after merging, where the mode merges (SSF, LoRA)."""
    import copy

    from transfer_eval.methods import deltas, modes
    from transfer_eval.methods.fields import checked_fields

    fields = checked_fields({**mode.defaults, **(recipe or {})})
    if mode.check is not None:
        mode.check(fields)
    model = modes.prepare(mode, copy.deepcopy(model), fields)
    names = modes.apply(mode, model)
    fwd = forward_flops(model, data_config, device)
    # Probes' training compute is forward passes only (features; few-shot solves in closed form), as the runner
    # records it.
    train = fwd if mode.stage in ("probe", "fewshot", "knn") else train_step_flops(model, data_config, device)
    state = model.state_dict()
    total = count(model)
    per_task = count(model, names)
    head = count(model, names & modes.head_names(model))
    full_bytes = deltas.size(state)
    task_bytes = deltas.size({n: state[n] for n in names})
    deployed = fwd if mode.merge is None else forward_flops(modes.merge(mode, model), data_config, device)
    card = {
        "resolution": data_config["input_size"][-1],
        "fwd_gflops_per_image": fwd / 1e9,
        "fwd_gmacs_per_image": fwd / 2e9,
        "deployed_gflops_per_image": deployed / 1e9,  # the task as served: merged where the mode merges
        "train_gflops_per_image": train / 1e9,  # probes: one forward pass for feature extraction
        "train_gmacs_per_image": train / 2e9,
        "params_total": total,
        "params_trainable": per_task,
        "params_per_task": per_task,
        "params_backbone": per_task - head,  # the published PEFT columns' count (head excluded)
        "params_head": head,
        "params_shared": total - per_task,
        "bytes_per_task": task_bytes,
        "bytes_full_copy": full_bytes,
        "storage_saved_per_extra_task": 1 - task_bytes / full_bytes,
        "stored_per_task": mode.stores,
    }
    if mode.stage == "knn":  # the memory grows with the task's data: known per training image, not per task
        dim = getattr(model, "head_hidden_size", None) or model.num_features  # the pre-logits features
        card.update(bytes_per_task=None, storage_saved_per_extra_task=None, bytes_per_train_image=4 * dim + 8)
        card["stored_per_task"] += f" ({4 * dim + 8:,} bytes per train+val image)"
    return card
