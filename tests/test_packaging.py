"""Packaging: the console script, `python -m`, and a wheel that carries the built-in tasks and registry."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, cli_process, json_lines

import transfer_eval


def test_console_script_and_module_are_the_same_program():
    exe = shutil.which("transfer-eval", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert exe, "pip install -e . should put the transfer-eval script beside the interpreter"
    script = subprocess.run([exe, "--help"], capture_output=True, text=True)
    module = cli_process("--help")
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    assert "run" in module.stdout and "list" in module.stdout and "vit_demo" in module.stdout


def test_wheel_install_has_builtin_tasks_and_registry(tmp_path):
    pytest.importorskip("hatchling")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("transfer_eval-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "transfer_eval/_builtin/tasks/digits.py",
        "transfer_eval/_builtin/tasks/cifar.py",
        "transfer_eval/_builtin/checkpoints.yaml",
        "transfer_eval/_builtin/papers/three-things-table6.yaml",
        "transfer_eval/report/testbeds/timm.csv",  # effective robustness's lines (report/robustness.py)
        "transfer_eval/report/testbeds/objectnet.csv",
    ):
        assert expected in names
    root = Path(transfer_eval.__file__).parent.parent  # every module of every wing, sub-packages included
    source = {str(f.relative_to(root)) for f in (root / "transfer_eval").rglob("*.py")}
    assert source - set(names) == set() and "transfer_eval/store/cache/features.py" in source
    assert any(n.endswith("entry_points.txt") for n in names)

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli_process("list", "tasks", "--json", env={"PYTHONPATH": str(target)}, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    sources = {row["name"]: row["source"] for row in json_lines(proc.stdout)}
    assert str(target) in sources["digits"] and str(target) in sources["cifar10"]
    proc = cli_process("list", "checkpoints", "--json", env={"PYTHONPATH": str(target)}, cwd=elsewhere)
    assert "vit_demo" in {row["name"] for row in json_lines(proc.stdout)}
    proc = cli_process("paper", "list", "--json", env={"PYTHONPATH": str(target)}, cwd=elsewhere)
    presets = {row["name"]: row["source"] for row in json_lines(proc.stdout)}
    assert str(target) in presets["three-things-table6"] and len(presets) == 6, proc.stderr
