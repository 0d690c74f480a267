"""transfer-eval: how well does a ViT checkpoint transfer, and at what cost.

The Python API (transfer_eval.api), importable from here:

    evaluate(checkpoints, tasks, modes, **options) -> list[Result]   what `transfer-eval run` runs
    load_results(store=None, **filters) -> pandas.DataFrame           one row per stored result
    leaderboard(store=None, ...) -> report.Leaderboard                 what `leaderboard` renders (.to_frame())
    compare(checkpoints, store=None, ...) -> report.Comparison         what `compare` renders (.to_frame())
    add_checkpoint(name, model, weights=..., ...), add_task(task)     without writing a file
    predict(checkpoint, delta, images, top_k=5) -> list[Prediction]   what `predict` prints: a task from its delta
"""

from transfer_eval.version import __version__

_API = ("evaluate", "load_results", "leaderboard", "compare", "add_checkpoint", "add_task", "predict")
__all__ = ["__version__", *_API]


def __getattr__(name):  # the API on first use: `import transfer_eval` stays light (no torch until it is needed)
    if name in _API:
        from transfer_eval import api

        return getattr(api, name)
    raise AttributeError(f"module 'transfer_eval' has no attribute {name!r}")
