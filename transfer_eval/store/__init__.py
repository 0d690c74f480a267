"""The store wing: what is kept between runs.

- `results.py`: the `Result` record and the `Store` (schema version, migrated on open);
- `databases.py`: SQLite and PostgreSQL behind one small interface; `filesystems.py`: the filesystem of a path
  (a SQLite store on NFS is refused for sweeps);
- `cache/`: the feature cache (`features.py`) and one interface over it and the input wing's image cache.

It may import the input and tasks wings (the cache interface lists the image cache) and the shared pieces.
"""
