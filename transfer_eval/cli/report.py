"""`leaderboard`, `compare` and `report`: tables, paired comparisons and the html site, read from the store
(the work is transfer_eval.report's)."""

from __future__ import annotations

import click

from transfer_eval.cli.group import cli
from transfer_eval.cli.options import (
    CONTEXT,
    csv,
    format_option,
    json_option,
    open_store,
    output_option,
    papers_dir_option,
    registry_option,
    results_option,
    tasks_dir_option,
)
from transfer_eval.errors import UserError

include_limited_option = click.option(
    "--include-limited", is_flag=True, help="Also count results of --limit runs (a quick look at part of the data)."
)
# effective robustness on ImageNet's shift sets (transfer_eval/report/robustness.py)
line_option = click.option(
    "--line",
    type=click.Choice(["testbed", "stored"]),
    default="testbed",
    show_default=True,
    help="The effective-robustness line of each shift set shown (ImageNet-v2, -Sketch, -A, -R, ObjectNet): fitted "
    "on timm's published results (Taori et al.'s for ObjectNet), or on this store's own pretrained results (at "
    "least 5 checkpoints with both imagenet1k and the set).",
)


def _task_columns(value: str | None) -> list[str]:
    """-t as leaderboard and report take it: folder:PATH and hf:PATH as typed (relative, with ~) name the task
    stored under the absolute path."""
    from transfer_eval.tasks import names

    return [names.stored_name(n) for n in csv(value)]


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_names", default=None, help="Only these checkpoints (comma-separated).")
@click.option(
    "-t",
    "--task",
    "task_names",
    default=None,
    help="The task columns (comma-separated). Default: the group's tasks, else every stored task.",
)
@click.option("-m", "--mode", "mode_names", default=None, help="Only these modes (comma-separated).")
@click.option(
    "--group",
    default=None,
    help="The task group the mean, suite storage and compute are over: paper6 (the six transfer sets of "
    "the attention-only paper), cifar, inat, demo, vtab1k (its 19 tasks and 3 group means), or all (the task "
    "columns shown; default). See `transfer-eval list groups`.",
)
@click.option(
    "--mean",
    "mean_rule",
    type=click.Choice(["tasks", "groups", "both"]),
    default="tasks",
    show_default=True,
    help="For a group of groups (vtab1k): the mean over its tasks (SSF, V-PETL Bench), over its groups' means "
    "(NOAH), or both columns.",
)
@click.option(
    "--metric",
    type=click.Choice(["top1", "top5", "balanced", "ece", "nll"]),
    default="top1",
    show_default=True,
    help="What the cells show and sort by: test top-1, top-5, balanced top-1 (mean per-class recall), expected "
    "calibration error or negative log-likelihood (lowest first; '-' where a result has none).",
)
@click.option(
    "--sort",
    default=None,
    metavar="COLUMN[:asc|desc]",
    help="checkpoint, mode, a task name, mean, params_per_task, suite_bytes, storage_ratio, "
    "train_pflops or TASK_effective_robustness. Default: mean, best first; missing values always last.",
)
@format_option
@output_option
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also plot accuracy against params/task and training compute (.png, .svg or .pdf).",
)
@click.option(
    "--plot-robustness",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also plot each shift set's top-1 against imagenet1k's on logit axes, with the line and the testbed "
    "(.png, .svg or .pdf).",
)
@line_option
@include_limited_option
@results_option
def leaderboard(
    checkpoint_names,
    task_names,
    mode_names,
    group,
    mean_rule,
    metric,
    sort,
    fmt,
    output,
    plot,
    plot_robustness,
    line,
    include_limited,
    results,
):
    """Rows checkpoint x mode x variant; columns: the task accuracies, their mean over a task group, params per task,
    suite storage and training compute.

    Several seeds show as mean ± std (n); every cell and mean carries its 95% interval [low, high], and the
    cells that cannot be told from their column's best are bold (≈ in the table). A missing result shows as
    missing, and a group mean with a missing task as incomplete. csv and json carry raw values (accuracies as
    fractions). A shift set of ImageNet shown (imagenetv2_matched_frequency, imagenet_sketch, imagenet_a,
    imagenet_r, objectnet) adds its effective robustness (ER, Taori et al. 2020): its top-1 minus the line's at
    the row's imagenet1k top-1.

    \b
    Examples:
      transfer-eval leaderboard
      transfer-eval leaderboard --group paper6 --format markdown --output leaderboard.md
      transfer-eval leaderboard -m attention,full --sort train_pflops --plot acc_vs_cost.png
      transfer-eval leaderboard --group vtab1k --mean both
      transfer-eval leaderboard --metric ece --format json
      transfer-eval leaderboard -t imagenet1k,imagenet_r --plot-robustness robustness.png
    """
    from transfer_eval import report

    if plot:
        report.check_plot_path(plot)
        if metric != "top1":
            raise UserError(f"--plot draws top-1 against cost; --metric {metric} changes the table only: drop one")
    if plot_robustness:
        report.check_plot_path(plot_robustness)
    store = open_store(results)
    lb = report.leaderboard(
        store,
        csv(checkpoint_names),
        _task_columns(task_names),
        csv(mode_names),
        group,
        sort,
        include_limited,
        mean_rule,
        metric,
        line=line,
    )
    if plot_robustness:
        report.robustness_plot.check(lb, plot_robustness)  # no shift set shown: one line, before any output
    text = report.render(lb, fmt)
    if output:
        report.write_text(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    if plot:
        report.plot_leaderboard(lb, plot)
        click.echo(f"wrote {plot}", err=True)
    if plot_robustness:
        report.plot_robustness(lb, plot_robustness)
        click.echo(f"wrote {plot_robustness}", err=True)
    store.close()


@cli.command(context_settings=CONTEXT)
@click.argument("checkpoint_names", nargs=-1, metavar="[CHECKPOINT CHECKPOINT ...]")
@click.option(
    "-c",
    "--checkpoint",
    "checkpoint_option",
    default=None,
    help="The checkpoints, comma-separated, as every other command takes them (or give them as arguments); "
    "the first is the reference A.",
)
@click.option("-t", "--task", "task_names", default=None, help="Only these tasks (comma-separated).")
@click.option("-m", "--mode", "mode_names", default=None, help="Only these modes (comma-separated).")
@click.option(
    "--resamples",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Bootstrap resamples for the confidence intervals.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also plot the differences with their CIs (.png, .svg or .pdf).",
)
@line_option
@include_limited_option
@results_option
@json_option
def compare(
    checkpoint_names,
    checkpoint_option,
    task_names,
    mode_names,
    resamples,
    plot,
    line,
    include_limited,
    results,
    as_json,
):
    """Paired comparison of checkpoints on every task and mode both were run on.

    delta = B - A (A: the first checkpoint; with more than two, each is compared against the first), with a
    95% paired bootstrap CI and McNemar's exact p-value from the stored per-sample predictions; results measured
    on different test examples are refused. Win / loss: p < 0.05. On an ImageNet shift set, the difference in
    effective robustness too (d ER).

    \b
    Examples:
      transfer-eval compare deit3_s16_in1k augreg_s16_in21k_ft_in1k
      transfer-eval compare vit_demo vit_demo_shapes -m linear --json
      transfer-eval compare -c vit_demo,vit_demo_shapes -t digits
    """
    from transfer_eval import report

    checkpoint_names = [*checkpoint_names, *csv(checkpoint_option)]
    if len(checkpoint_names) < 2:
        raise UserError("compare needs two or more checkpoints, e.g. `transfer-eval compare CHECKPOINT_A CHECKPOINT_B`")
    if plot:
        report.check_plot_path(plot)
    store = open_store(results)
    cmp = report.compare(
        store,
        list(checkpoint_names),
        csv(task_names),
        csv(mode_names),
        resamples,
        include_limited=include_limited,
        line=line,
    )
    if as_json:
        if len(cmp.others) > 1:
            click.echo(report.compare_intro(cmp)[0], err=True)
        click.echo(report.compare_json(cmp), nl=False)
    else:
        click.echo(report.compare_text(cmp), nl=False)
    if plot:
        lb = report.leaderboard(
            store,
            [cmp.reference, *cmp.others],
            sorted({r.task for r in cmp.rows}),
            sorted({r.mode for r in cmp.rows}),
            include_limited=include_limited,
        )
        report.plot_compare(cmp, plot, lb)
        click.echo(f"wrote {plot}", err=True)
    store.close()


@cli.command(context_settings=CONTEXT)
@click.option(
    "--html",
    "html_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The folder to write the site to (index.html and the plots).",
)
@click.option("--group", default=None, help="The task group of the leaderboard's mean (see leaderboard --group).")
@click.option(
    "--resamples",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Bootstrap resamples for the confidence intervals of the comparisons.",
)
@click.option("-c", "--checkpoint", "checkpoint_names", default=None, help="Only these checkpoints (comma-separated).")
@click.option("-t", "--task", "task_names", default=None, help="The task columns (comma-separated), as leaderboard's.")
@click.option("-m", "--mode", "mode_names", default=None, help="Only these modes (comma-separated).")
@line_option
@registry_option
@tasks_dir_option
@papers_dir_option
@results_option
def report(
    html_dir,
    group,
    resamples,
    checkpoint_names,
    task_names,
    mode_names,
    line,
    registries,
    tasks_dirs,
    papers_dirs,
    results,
):
    """A static html report: the sortable leaderboard, the comparisons against the top checkpoint and the plots.

    Open DIR/index.html in a browser; no server is needed.

    \b
    Examples:
      transfer-eval report --html site && xdg-open site/index.html
      transfer-eval report --html site -t folder:~/data/birds -m linear,knn
    """
    from transfer_eval import report as report_
    from transfer_eval.checkpoints import load_registry
    from transfer_eval.tasks import discover

    registry, tasks = load_registry(registries), discover(tasks_dirs)
    store = open_store(results)
    index = report_.html_report(
        store,
        html_dir,
        group,
        resamples,
        registry,
        tasks,
        papers_dirs,
        registries,
        tasks_dirs,
        csv(checkpoint_names),
        _task_columns(task_names),
        csv(mode_names),
        line=line,
    )
    store.close()
    click.echo(f"wrote {index}")
