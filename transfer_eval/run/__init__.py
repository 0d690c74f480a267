"""The run wing: planning and executing runs.

- `runner.py`: `plan` (checkpoint x task x mode x recipe x seed) and the skip loop `run_all`;
- `runs.py`: `Run`, one planned run and its key, below every other module of the wing (each reads it);
- `execution.py`: `execute`, one run end to end, under its precision;
- `checks.py`: what is checked before the first run (`preflight`: data, weights, heads, input options);
- `locks.py`: one process per fine-tuning run key at a time (its training checkpoints are the cache's, not a store's);
- `stages.py`: what each mode's stage does (probe, fewshot, knn, finetune, eval), each returning a `Trained`;
- `sweep.py`: sweeps, locally or on Slurm (requeued on pre-emption); `trackers.py`: TensorBoard and W&B.

It may import the methods, store, input and tasks wings, `checkpoints` and the shared pieces at the root; nothing
below it imports it.
"""
