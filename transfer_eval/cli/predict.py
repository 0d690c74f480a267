"""`predict`: one task served from its delta (`run --save-delta`) on the shared checkpoint."""

from __future__ import annotations

import json

import click

from transfer_eval.cli.group import cli
from transfer_eval.cli.options import CONTEXT, device_option, registry_option


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_name", required=True, help="The checkpoint the delta was trained on.")
@click.option(
    "--delta",
    "delta_path",
    required=True,
    help="A per-task delta file, as `run --save-delta FOLDER` writes them (a .safetensors file).",
)
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per image.")
@device_option
@registry_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image: path, labels, names, scores.")
def predict(checkpoint_name, delta_path, images, top_k, device, registries, as_json):
    """Classify image files with one task's delta on its checkpoint.

    IMAGES are image files or folders (walked recursively for image files, in sorted order). The delta file
    carries what serving needs: the mode and recipe, the class names, the task's evaluation transform and the
    digest of the weights it was trained on (a delta for other weights is refused). Methods that merge (LoRA,
    SSF) are merged; k-NN votes against its stored memory. Prints each image's top-k classes with their names
    and scores (softmax probabilities; k-NN: share of the vote; few-shot: regression output).

    \b
    Example (after `transfer-eval run -c vit_demo_shapes -t digits -m linear --save-delta deltas`):
      transfer-eval predict -c vit_demo_shapes --delta deltas/vit_demo_shapes__digits__linear__*.safetensors \\
          my_digits/
    """
    from tabulate import tabulate

    from transfer_eval.run import serve

    rows = serve.predict(checkpoint_name, delta_path, images, top_k, device, registries)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r.to_dict()))
        return
    table = [[r.path, *(f"{n} ({s:.4f})" for n, s in zip(r.names, r.scores))] for r in rows]
    width = max((len(r.labels) for r in rows), default=0)
    click.echo(tabulate(table, headers=["image", *(f"top-{i}" for i in range(1, width + 1))]))
