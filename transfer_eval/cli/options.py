"""What several commands share: argument parsing helpers, options, and the bundle that run and sweep both take."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from transfer_eval import paths
from transfer_eval.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def ints(value: str) -> list[int]:
    try:
        return [int(v) for v in csv(value)]
    except ValueError:
        raise UserError(f"--seed {value!r}: give integers separated by commas, e.g. 0,1,2") from None


def overrides(pairs) -> dict:
    """--set KEY=VALUE pairs as recipe fields (values read as YAML: 0.003, [1, 5], true)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: use key=value, e.g. --set lr=0.003 or --set steps=500")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {pair!r}: the value is not valid YAML") from None
    return out


def load_context(data_dir, skip_verify, download=False, bad_images="stop"):
    from transfer_eval.tasks import LoadContext

    return LoadContext(
        Path(data_dir) if data_dir else paths.default_data_dir(),
        verify=not skip_verify,
        download=download,
        bad_images=bad_images,
    )


def open_store(results):
    """The results store for reading: a missing file is bad input, not an empty store to create."""
    from transfer_eval.store.results import Store

    return Store.existing(results)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged, not the stream it was made with, so that a
    program run more than once in one process (a notebook, the tests) keeps logging where stderr now goes."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ sets it; the property decides
        pass


def show_log() -> None:
    """The library logs (transfer_eval.*); the CLI shows its INFO lines and above on stderr, as they are."""
    logger = logging.getLogger("transfer_eval")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


# --------------------------------------------------------------------------------------------------- options

RESULTS_HELP = (
    "Results store: a SQLite file, or a postgresql:// URL for a store that many nodes share. "
    "Default: $TRANSFER_EVAL_RESULTS or ./transfer_eval_results.sqlite."
)
REGISTRY_HELP = "A YAML file of extra or overriding checkpoints (repeatable; also TRANSFER_EVAL_REGISTRY)."
TASKS_DIR_HELP = "A folder of task plugin files (*.py) to add (repeatable)."
DATA_DIR_HELP = "Root folder of the datasets. Default: $TRANSFER_EVAL_DATA or ./data."

registry_option = click.option(
    "--registry", "registries", multiple=True, type=click.Path(dir_okay=False), help=REGISTRY_HELP
)
tasks_dir_option = click.option(
    "--tasks-dir", "tasks_dirs", multiple=True, type=click.Path(file_okay=False), help=TASKS_DIR_HELP
)
papers_dir_option = click.option(
    "--papers-dir",
    "papers_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A folder of your own paper presets (*.yaml; repeatable); one named like a shipped preset wins.",
)
results_option = click.option("--results", type=click.Path(dir_okay=False), default=None, help=RESULTS_HELP)
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA if visible, else CPU), cpu, cuda or cuda:N."
)
skip_verify_option = click.option(
    "--skip-verify", is_flag=True, help="Do not check dataset checksums (re-packed copies, test fixtures)."
)
download_option = click.option(
    "--download", is_flag=True, help="Download missing datasets where their source allows it (never otherwise)."
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "markdown", "csv", "json", "latex", "html"]),
    default="table",
    show_default=True,
)
output_option = click.option(
    "--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout."
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line, flat record fields.")

# The options `run` and `sweep` share, declared once: `shared_options` adds them to a command and `shared_argv`
# writes a sweep's choices back as `run` arguments for its jobs, so a new run option is one line here.
SHARED = [
    (("--data-dir",), dict(type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)),
    (("--results",), dict(type=click.Path(dir_okay=False), default=None, help=RESULTS_HELP)),
    (("--registry", "registries"), dict(multiple=True, type=click.Path(dir_okay=False), help=REGISTRY_HELP)),
    (("--tasks-dir", "tasks_dirs"), dict(multiple=True, type=click.Path(file_okay=False), help=TASKS_DIR_HELP)),
    (
        ("--resolution",),
        dict(
            type=click.IntRange(min=16),
            default=None,
            help="Input size in pixels (e.g. 384); the position embedding is resampled by timm.",
        ),
    ),
    (
        ("--recipe", "preset"),
        dict(
            type=click.Choice(["vit", "deit", "vtab", "paper"]),
            default=None,
            help="Fine-tuning preset: vit (the ViT paper: SGD, lr grid on val, retrain; the default), deit "
            "(DeiT III: AdamW, RandAugment, mixup/cutmix, label smoothing) or vtab (the PEFT papers' VTAB-1k: "
            "AdamW, batch 64, no augmentation; the default of the vtab1k tasks). The task's schedule applies. "
            "paper: the probes (linear, knn, fewshot) read the features the checkpoint's paper probed "
            "(`list checkpoints`, paper probe); fine-tuning keeps the task's preset.",
        ),
    ),
    (
        ("--set", "settings"),
        dict(
            multiple=True,
            metavar="KEY=VALUE",
            help="Override a recipe field, e.g. --set steps=500 --set lr=0.003 (repeatable).",
        ),
    ),
    (
        ("--save-delta",),
        dict(
            type=click.Path(file_okay=False),
            default=None,
            help="Keep each run's per-task delta (the trained parameters) as a safetensors file in this folder.",
        ),
    ),
    (
        ("--checkpoint-every",),
        dict(
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Write a training checkpoint every N steps (0: every 10 minutes). A killed run "
            "resumes from it when the same command is run again.",
        ),
    ),
    (
        ("--precision",),
        dict(
            type=click.Choice(["auto", "fp32", "bf16"]),
            default="auto",
            show_default=True,
            help="Arithmetic of each phase. auto: features and scoring in strict fp32 everywhere, fine-tuning "
            "steps in bf16 autocast on CUDA (a result is the same on a GPU as on a CPU); fp32 or bf16: every "
            "phase (bf16 works on a CPU too, to see its effect). A chosen precision is stored apart from auto.",
        ),
    ),
    (
        ("--device-resize",),
        dict(
            type=click.Choice(["auto", "on", "off"]),
            default="auto",
            show_default=True,
            help="Resize small images (CIFAR's 32 px) on the device in one batched op instead of "
            "in the CPU workers, with PIL's own resampling (the same pixels); auto: on CUDA where the augmentation "
            "allows (not RandAugment).",
        ),
    ),
    (
        ("--decode",),
        dict(
            type=click.Choice(["cpu", "device"]),
            default="cpu",
            show_default=True,
            help="Where JPEG files are decoded: cpu (PIL in the workers) or device (torchvision's decode_jpeg, "
            "nvJPEG on CUDA, then Pillow's resize and crop to the bit on the device) for evaluation, features and "
            "training input (crops and flips with the CPU path's draws; not RandAugment). Named in the record, "
            "features cached apart.",
        ),
    ),
    (
        ("--cache-images",),
        dict(
            is_flag=True,
            help="Decode each image file once and keep it at the training resolution "
            "($TRANSFER_EVAL_CACHE/images): later epochs and runs skip decoding and the big "
            "resize.",
        ),
    ),
    (
        ("--workers",),
        dict(
            type=click.IntRange(min=0),
            default=None,
            help="DataLoader worker processes. Default: none on a CPU; with a GPU, every core but one.",
        ),
    ),
    (
        ("--compile", "compile_model"),
        dict(is_flag=True, help="Train through torch.compile (slower start, faster steps on a GPU)."),
    ),
    (
        ("--limit",),
        dict(
            type=click.IntRange(min=1),
            default=None,
            help="A quick look: at most N examples per split (stratified, deterministic). Such results are marked, "
            "have keys of their own and stay out of leaderboards and comparisons unless --include-limited.",
        ),
    ),
    (
        ("--log", "trackers"),
        dict(
            multiple=True,
            type=click.Choice(["tensorboard", "wandb"]),
            help="Send each finished run's training curves, recipe and record to an experiment tracker "
            "(repeatable; wandb runs offline unless WANDB_MODE is set).",
        ),
    ),
    (
        ("--log-dir",),
        dict(
            type=click.Path(file_okay=False),
            default="transfer_eval_logs",
            show_default=True,
            help="Where --log trackers write.",
        ),
    ),
    (
        ("--companions",),
        dict(
            default="all",
            show_default=True,
            metavar="none|all|LIST",
            help="Companion test sets (tasks that train as the run's task and differ only in test, as ImageNet-1k's "
            "ImageNet-v2, -A, -R, ReaL, Sketch and ObjectNet) scored with each run's model, probe or memory, "
            "without training again: all whose data is present, none, or the task names, comma-separated. Each is "
            "stored as a run of its own; not part of any run's key.",
        ),
    ),
    (("--skip-verify",), dict(is_flag=True, help="Do not check dataset checksums (re-packed copies, test fixtures).")),
    (
        ("--bad-images",),
        dict(
            type=click.Choice(["stop", "skip"]),
            default="stop",
            show_default=True,
            help="An unreadable image: stop (the run fails, naming the file) or skip (decode every "
            "image first, leave the unreadable out, record how many).",
        ),
    ),
]


def shared_options(f):
    for decls, attrs in reversed(SHARED):
        f = click.option(*decls, **attrs)(f)
    return f


def shared_argv(values: dict) -> list[str]:
    """The shared options in `values` (a command's parameters by name) as `run` arguments; defaults left out."""
    argv = []
    for decls, attrs in SHARED:
        opt = click.Option(list(decls), **attrs)
        flag, value = opt.opts[0], values[opt.name]
        if opt.is_flag:
            argv += [flag] if value else []
        elif opt.multiple:
            argv += [a for v in value for a in (flag, str(v))]
        elif value is not None and value != opt.default:
            argv += [flag, str(value)]
    return argv


def executor_options(f):
    """How a sweep's (or `paper run`'s) jobs are cut and launched: locally, or on Slurm through submitit."""
    options = [
        click.option(
            "--per",
            type=click.Choice(["run", "group"]),
            default="group",
            show_default=True,
            help="One job per run, or per checkpoint x task (its modes and seeds together).",
        ),
        click.option(
            "--executor",
            type=click.Choice(["local", "slurm"]),
            default="local",
            show_default=True,
            help="local: the jobs one after another here; slurm: submitted through submitit.",
        ),
        click.option("--dry-run", is_flag=True, help="Print the plan (the runs still missing, as jobs) and stop."),
        click.option(
            "--slurm-folder", type=click.Path(file_okay=False), default="transfer_eval_slurm", show_default=True
        ),
        click.option("--partition", default=None, help="Slurm partition."),
        click.option("--gpus-per-job", type=click.IntRange(min=0), default=1, show_default=True),
        click.option("--cpus-per-job", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--mem-gb", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--timeout-min", type=click.IntRange(min=1), default=24 * 60, show_default=True),
    ]
    slurm_keys = ("slurm_folder", "partition", "gpus_per_job", "cpus_per_job", "mem_gb", "timeout_min")

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        kwargs["slurm"] = {k: kwargs.pop(k) for k in slurm_keys}
        return f(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
