"""The README's examples run as written (issue 34, item 1), in order, in one fresh folder, as a new user would run
them after the set-up: every Python block, and every shell command that needs no dataset download, GPU, cluster,
server or file of the user's. The README is read when the test runs, so examples added to it are covered too.

What is not run is listed below with the reason; a block the user must fill in first says `template` on its first
line, and is checked to say it. Commands run in this process where they are a plain `transfer-eval ...` (no
Python start-up each), through bash otherwise; all of them share one results store (the default one in the
folder) and the tests' feature cache, so a command that repeats an earlier one finds its runs stored."""

from __future__ import annotations

import ast
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli, hermetic_env

README = REPO / "README.md"
TEMPLATE = "template"  # the first line of a block the user must fill in says so

# (pattern, reason): commands the test does not run. Each pattern must match some command of the README.
NOT_RUN = [
    (r"^pip install", "installs packages: the tests run in the environment already installed"),
    (r"--executor slurm", "submits Slurm jobs: needs a cluster"),
    (r"^torchrun", "several GPUs (and CIFAR-100 on disk)"),
    (r"postgresql://", "needs a PostgreSQL server"),
    (r"--device cuda", "needs a CUDA GPU"),
    (r"\sbench\s", "times ViT-B training steps and JPEG pipelines: minutes on a 2-core CPU"),
    (r"--registry my_checkpoints\.yaml", "uses the template registry above (the user's own weights file)"),
    (r"--tasks-dir my_tasks", "uses the template task plugin above (the user's own data)"),
    (r"leaderboard --group vtab1k", "ranks the VTAB-1k runs of the command before it, which reads VTAB-1k's data"),
    (r"--plot-robustness", "ranks the ImageNet runs of the command before it, which reads ImageNet's data; "
     "tests/report/test_effective_robustness.py checks the ER columns, the sort key and the plot"),
    (r"-t cifar100 ", "reads CIFAR-100 from disk and downloads DINOv2's or CLIP's weights"),
    (r"cost -c vit_base_patch16_224", "counts ViT-B/16's FLOPs, a minute on a 2-core CPU; tests/methods/test_costs.py "
     "and test_peft_costs.py check those counts"),
    (r"--device-resize on", "the device resize emulated on a CPU: minutes here; tests/input/ run it on small data"),
    (r"features=\[pooled,cls\+avg,last4\+avg\]", "a C search per feature source: minutes on a 2-core CPU; "
     "tests/methods/test_feature_sources.py runs this command with --limit"),
    (r"--precision bf16", "bf16 emulated on a CPU is slow; tests/methods/test_precision.py runs that numeric path"),
    (r"\s(run|sweep|features|list tasks|data check)\s.*~/data", "reads a dataset (or the user's own folder) that the "
     "test machine lacks, and that would be downloaded"),
]  # fmt: skip
# commands whose documented exit status is not 0 where the machine lacks something: `data check` exits 1 when a
# dataset is missing ("which datasets are present, what is missing")
EXIT = {r"^transfer-eval data check\b": {0, 1}}


@dataclass
class Block:
    lang: str
    text: str
    line: int  # where it starts in README.md
    section: str

    @property
    def template(self) -> bool:
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        return first.startswith("#") and TEMPLATE in first.lower()


def blocks(text: str) -> list[Block]:
    out, section = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#") and not lines[i].startswith("#!"):
            section = lines[i].lstrip("#").strip()
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            out.append(Block(fence.group(1), "\n".join(lines[i + 1 : end]) + "\n", i + 2, section))
            i = end
        i += 1
    return out


def commands(block: Block) -> list[tuple[int, str]]:
    """The commands of a shell block: continuation lines joined, comments dropped (bash's own reading)."""
    out, current, start = [], "", 0
    for n, line in enumerate(block.text.splitlines()):
        if not current:
            start = block.line + n
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if line.rstrip().endswith("\\"):
            continue
        words = shlex.split(current, comments=True)
        if words:
            out.append((start, shlex.join(words) if _plain(current) else _strip_comment(current)))
        current = ""
    return out


def _plain(command: str) -> bool:
    """A single program call: no pipes, lists, redirections or file-name patterns (after the comment)."""
    return not re.search(r"[|;&<>*?]", _strip_comment(command))


def _strip_comment(command: str) -> str:
    """The command without its trailing comment (a `#` starting a word, outside quotes), as written otherwise."""
    quote = None
    for i, ch in enumerate(command):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].strip()
    return command.strip()


def not_run(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_RUN if re.search(pattern, command)), None)


def _expand(word: str, home: Path) -> str:
    """A shell's tilde expansion (at the start of a word)."""
    return str(home) + word[1:] if word == "~" or word.startswith("~/") else word


@pytest.fixture(scope="module")
def readme() -> list[Block]:
    return blocks(README.read_text(encoding="utf-8"))


def test_blocks_are_read_as_a_shell_would(tmp_path):
    text = "# S\n```bash\ntransfer-eval run -c a \\\n    -t b   # note\n# only a comment\nx | grep y  # z\n```\n"
    (block,) = blocks(text)
    assert block.section == "S" and block.line == 3
    assert commands(block) == [(3, "transfer-eval run -c a -t b"), (6, "x | grep y")]
    assert not_run("transfer-eval run -c x -t cifar100 --data-dir ~/data -m linear")
    assert not_run("transfer-eval run -c x -t digits -m linear") is None
    assert _expand("~/data", tmp_path) == f"{tmp_path}/data" and _expand("folder:~/x", tmp_path) == "folder:~/x"


def test_templates_say_so(readme):
    """Blocks a user must fill in (Ellipsis placeholders, /path/to/ paths) say `template` on their first line; a
    template is still well-formed Python or YAML."""
    py = [b for b in readme if b.lang == "python"]
    skeleton = [b for b in py if "def load(split, ctx)" in b.text]
    assert skeleton and all(b.template for b in skeleton), "the task plugin skeleton is not marked as a template"
    for b in py:
        tree = ast.parse(b.text)
        placeholder = any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(tree))
        assert b.template or not placeholder, f"README.md:{b.line}: a block with `...` to fill in says `template`"
    for b in readme:
        if b.lang == "yaml":
            yaml.safe_load(b.text)
            assert b.template or "/path/to/" not in b.text, f"README.md:{b.line}: a YAML template says `template`"


def test_every_reason_not_to_run_is_used(readme):
    every = [c for b in readme if b.lang in ("bash", "sh", "shell") for _, c in commands(b)]
    unused = [p for p, _ in NOT_RUN if not any(re.search(p, c) for c in every)]
    assert not unused, f"NOT_RUN patterns that match no README command (remove them): {unused}"


NOT_A_MODE = re.compile(r"\b(?:is|are) not (?:a )?modes?\b")


def modes_named(text: str) -> dict[str, list[str]]:
    """The modes the README's text names, where: the mode table's rows, prose (`x` mode, mode `x`, modes `x`, `y`
    and `z`), every `-m` of a command (not Python's own: `python -m pytest`); and the names a sentence says are not
    modes (the words before "is not a mode" / "are not modes", back to the clause's start)."""
    header = text.index("\n| mode |")
    table = text[header + 1 :].split("\n\n", 1)[0]
    prose = re.findall(r"`(\w+)` modes?\b", text)
    for listed in re.finditer(r"\bmodes?:?\s+((?:`\w+`(?:,\s*|\s+and\s+|\s+or\s+)?)+)", text):
        prose += re.findall(r"`(\w+)`", listed.group(1))
    commands = re.sub(r"\b(?:python3?|torchrun)\b(?:\s+--?[\w-]+(?:[= ][^\s-]\S*)?)*\s+-m\s+\S+", " ", text)
    flags = [m for v in re.findall(r"(?<![\w-])-m\s+`?([\w,]+)", commands) for m in v.split(",")]
    denied = [c.split(m.group(0))[0] for c in re.split(r"[.;:()]", text) if (m := NOT_A_MODE.search(c))]
    return {
        "table": re.findall(r"^\| `(\w+)` \|", table, re.M),
        "prose": prose,
        "-m": flags,
        "said not to be modes": [w.lower() for d in denied for w in re.findall(r"[A-Za-z_0-9]+", d)],
    }


def test_every_mode_the_readme_names_is_a_mode():
    """A sentence that names a mode that is gone, or says a mode is not one, fails here (issue 42: the VTAB-1k
    section said VPT, Adapter, NOAH and SSF were not modes long after three of them were)."""
    from transfer_eval.methods.modes import MODES

    named = modes_named(README.read_text(encoding="utf-8"))
    assert sorted(named["table"]) == sorted(MODES), "the README's mode table lists exactly the modes of MODES"
    for where in ("prose", "-m"):
        assert named[where] and not set(named[where]) - set(MODES), (where, sorted(set(named[where]) - set(MODES)))
    assert not set(named["said not to be modes"]) & set(MODES), sorted(set(named["said not to be modes"]) & set(MODES))
    stale = modes_named(
        "\n| mode |\n|---|\n| `linear` | x |\n\nmode `vpt` and the `noah` mode; Adapter, SSF are not modes.\n"
        "python -m pytest; torchrun --nproc-per-node 4 -m transfer_eval run -m full,prompt"
    )
    assert stale == {
        "table": ["linear"],
        "prose": ["noah", "vpt"],
        "-m": ["full", "prompt"],
        "said not to be modes": ["adapter", "ssf"],
    }


@pytest.mark.slow
def test_readme_examples_run_as_written(readme, demo_run, tmp_path, monkeypatch):
    """Every Python block (not a template) and every shell command not in NOT_RUN, in README order, in one
    folder. A failing example is named by its line in README.md. The folder's default store starts as a copy of
    the session's demo store (conftest.demo_run: the README's set-up command, which the demo's tests run anyway),
    so the README's demo commands find their runs stored, as they would after the set-up."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    with sqlite3.connect(demo_run[0]) as source, sqlite3.connect(work / "transfer_eval_results.sqlite") as copy:
        source.backup(copy)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "transfer-eval").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m transfer_eval "$@"\n')
    (shim / "transfer-eval").chmod(0o755)
    env = {
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
    }
    ran, skipped, timings = [], [], []
    for block in readme:
        if block.template or block.lang not in ("bash", "sh", "shell", "python"):
            continue
        if block.lang == "python":
            start = time.perf_counter()
            _run_python(block, work, monkeypatch, env)
            timings.append((time.perf_counter() - start, f"README.md:{block.line} python block"))
            ran.append(f"python block at line {block.line}")
            continue
        for line, command in commands(block):
            reason = not_run(command)
            if reason:
                skipped.append((line, command, reason))
                continue
            start = time.perf_counter()
            proc = _run_shell(command, work, home, env)
            timings.append((time.perf_counter() - start, f"README.md:{line} {command}"))
            allowed = next((codes for p, codes in EXIT.items() if re.search(p, command)), {0})
            assert proc.returncode in allowed, (
                f"README.md:{line} ({block.section}): `{command}` exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
            )
            ran.append(command)
    # what ran, what did not and why, and the slowest (pytest -s shows it)
    print(f"\nREADME: {len(ran)} examples run, {len(skipped)} not run:")
    for line, command, reason in skipped:
        print(f"  README.md:{line}: {command[:90]}  -- {reason}")
    for seconds, what in sorted(timings, reverse=True)[:8]:
        print(f"  {seconds:6.1f} s  {what[:100]}")
    assert len(ran) >= 20  # the README's examples, not an empty reading of it


def _run_shell(command: str, work: Path, home: Path, env: dict) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    if _plain(command) and words[0] == "transfer-eval":
        return cli(*[_expand(w, home) for w in words[1:]], env=env, cwd=str(work))
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=work,
        env=hermetic_env(env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _run_python(block: Block, work: Path, monkeypatch, env: dict) -> None:
    """A Python block as a user's script would run it (in this process, from the folder), leaving nothing it
    registered (add_checkpoint, add_task) behind for other tests."""
    from transfer_eval import checkpoints
    from transfer_eval.tasks import plugins as tasks_

    added = (dict(checkpoints.ADDED), dict(tasks_.ADDED))
    monkeypatch.chdir(work)
    for k, v in hermetic_env({k: v for k, v in env.items() if k != "PATH"}).items():
        monkeypatch.setenv(k, v)
    for k in ("TRANSFER_EVAL_DATA", "TRANSFER_EVAL_RESULTS", "TRANSFER_EVAL_REGISTRY"):
        monkeypatch.delenv(k, raising=False)
    try:
        exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "__main__"})
    finally:
        checkpoints.ADDED.clear()
        checkpoints.ADDED.update(added[0])
        tasks_.ADDED.clear()
        tasks_.ADDED.update(added[1])
