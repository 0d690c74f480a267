"""The run wing: planning and executing runs.

- `runner.py`: `plan` (checkpoint x task x mode x recipe x seed, each with its key), the skip loop `run_all`, and
  `execute` (one run, under its precision);
- `checks.py`: what is checked before the first run (`preflight`: data, weights, heads, input options);
- `locks.py`: one process per fine-tuning run key at a time (its training checkpoints are the cache's, not a store's);
- `stages.py`: what each mode's stage does (probe, fewshot, knn, finetune, eval), each returning a `Trained`;
- `sweep.py`: sweeps, locally or on Slurm (requeued on pre-emption); `trackers.py`: TensorBoard and W&B.

It may import the methods, store, input and tasks wings, `checkpoints` and the shared pieces at the root; nothing
below it imports it (`stages` and `checks` name `runner.Run` for type checkers only).
"""
