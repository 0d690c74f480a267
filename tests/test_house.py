"""The shape of the package: wings imported only downwards, no import cycles (lazy imports inside functions
included), modules of one idea."""

import ast
from pathlib import Path

import transfer_eval

PACKAGE = Path(transfer_eval.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every transfer_eval module `path` imports: at the top, inside a function, or for type checkers only (under
    `if TYPE_CHECKING:`). A type-only import never runs, but it is a dependency all the same: a circle through one
    is a circle (the answer is a module of its own below both, as `run/runs.py` is for `Run`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transfer_eval"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found & known


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                return stack[stack.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "done"
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    mods = _modules()
    graph = {name: _imports(path, set(mods)) - {name} for name, path in mods.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_a_type_only_import_counts_for_the_cycle_check(tmp_path):
    """A circle closed by an import under `if TYPE_CHECKING:` is found (the one runner.Run made until issue 42)."""
    mods = {"transfer_eval.run.runner", "transfer_eval.run.stages"}
    runner, stages = tmp_path / "runner.py", tmp_path / "stages.py"
    runner.write_text("from transfer_eval.run import stages\n")
    stages.write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from transfer_eval.run.runner import Run\n"
    )
    graph = {"transfer_eval.run.runner": _imports(runner, mods), "transfer_eval.run.stages": _imports(stages, mods)}
    assert graph["transfer_eval.run.stages"] == {"transfer_eval.run.runner"}
    assert _cycle(graph) == ["transfer_eval.run.runner", "transfer_eval.run.stages", "transfer_eval.run.runner"]


# The wings from the top of the way through to its bottom (docs/ARCHITECTURE.md): a module may import its own wing
# and the wings below it, never one above. Modules at the package's root are named one by one.
WINGS = [
    ("top", ["transfer_eval", "transfer_eval.__main__", "transfer_eval.api", "transfer_eval.frames",
             "transfer_eval.papers", "transfer_eval.cli", "transfer_eval.report"]),
    ("measure", ["transfer_eval.measure"]),
    ("run", ["transfer_eval.run"]),
    ("checkpoints", ["transfer_eval.checkpoints"]),
    ("methods", ["transfer_eval.methods"]),
    ("store", ["transfer_eval.store"]),
    ("input", ["transfer_eval.input"]),
    ("tasks", ["transfer_eval.tasks"]),
    ("shared", ["transfer_eval.devices", "transfer_eval.distributed", "transfer_eval.errors", "transfer_eval.io",
                "transfer_eval.keys", "transfer_eval.paths", "transfer_eval.progress", "transfer_eval.protocol",
                "transfer_eval.provenance", "transfer_eval.version"]),
]  # fmt: skip


def _wing(module: str) -> int:
    """The index of the wing holding `module` (the longest prefix that names it)."""
    best = max(
        ((len(p), i) for i, (_, prefixes) in enumerate(WINGS) for p in prefixes
         if module == p or (module.startswith(p + ".") and p != "transfer_eval")),
        default=None,
    )  # fmt: skip
    assert best is not None, f"{module} is in no wing: add it to WINGS and to docs/ARCHITECTURE.md"
    return best[1]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} ({WINGS[_wing(a)][0]}) imports {b} ({WINGS[_wing(b)][0]})"
        for a, targets in graph.items() for b in targets if _wing(b) < _wing(a)
    )  # fmt: skip


def test_every_module_is_in_a_wing_and_imports_only_downwards():
    mods = _modules()
    graph = {name: _imports(path, set(mods)) - {name} for name, path in mods.items()}
    assert not _upward(graph), "\n".join(_upward(graph))


def test_the_wing_check_finds_an_upward_import():
    assert _upward({"transfer_eval.tasks.folder": {"transfer_eval.run.runner"}}) == [
        "transfer_eval.tasks.folder (tasks) imports transfer_eval.run.runner (run)"
    ]
    assert _upward({"transfer_eval.run.runner": {"transfer_eval.tasks.folder", "transfer_eval.errors"}}) == []


def test_no_module_is_past_500_lines():
    sizes = {
        p: len(p.read_text().splitlines()) for p in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "scripts").glob("*.py")]
    }
    assert not {str(p): n for p, n in sizes.items() if n > 500}
