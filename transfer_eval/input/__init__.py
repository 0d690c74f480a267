"""The input wing: how pixels reach the model.

- `pipeline.py`: input plans (what the record names and the feature cache keys on), loaders and the evaluation
  loaders started once per run, per-sample draw seeds (`seeded`, `EpochBatches`);
- `transforms.py`: timm's transforms; `image_cache.py`: a split's images decoded once (`run --cache-images`);
- on the device: `resample.py` (Pillow's resize to the bit), `device_decode.py` (`--decode device`: nvJPEG),
  `device_resize.py` (small images resized on the device), `prefetch.py` (device batches made ahead);
- `synthetic.py`: photo-like JPEGs for benchmarks.

It may import the tasks wing and the shared pieces at the root.
"""
