"""The `transfer-eval` command group every command module attaches to."""

from __future__ import annotations

import click

from transfer_eval.cli.options import CONTEXT


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="transfer-eval")
def cli():
    """transfer-eval: how well does a ViT checkpoint transfer, and at what cost?

    Adapt checkpoints (timm ViTs) to tasks (labelled image datasets) in modes (linear probe, attention-only or
    full fine-tuning); every result stores test accuracy beside compute (FLOPs, time, memory) and
    parameter-sharing cost (what one more task must store).

    \b
    Try it offline, in about half a minute on a laptop CPU:
      transfer-eval run -c vit_demo_shapes -t digits -m linear,attention,full
      transfer-eval list checkpoints
      transfer-eval show 1
    """
