"""The measure wing: what the suite measures about itself, and plans.

- `bench.py`: `transfer-eval bench` (extraction and training steps against bare inference, input rates);
- `bench_scale.py`: how the probe's cost grows with the data (synthetic features);
- `planning.py`: what missing runs need (data, FLOPs counted on the meta device, GPU-hours).

It may import every wing below it (run, methods, store, input, tasks) and the shared pieces.
"""
