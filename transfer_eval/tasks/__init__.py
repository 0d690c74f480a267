"""The tasks wing: what a task is and where tasks come from.

- `task.py`: the `Task` type (splits, class names, recipes per mode, val hold-out) and `holdout` / `spread`;
- `splits.py`: `ImageSplit` (images, labels, stable ids; sealing, signatures, the unreadable-image scan) and
  `LoadContext`, what a loader is given;
- `plugins.py`: plugin discovery (the built-in `tasks/` folder, entry points, `--tasks-dir`, `add_task`);
- `names.py`: a task name as users give it (registered, `folder:PATH`, `hf:PATH_OR_NAME`), read by `folder.py`
  (torchvision's ImageFolder layout) and `hf.py` (a Hugging Face dataset);
- `groups.py`: task groups (paper6, vtab1k and its parts): the leaderboard's means and names on the command line;
- `imagenet_shared.py`: what the ImageNet plugins share (the listings of ImageNet-1k train and val, timm's wnid lists
  and ReaL label sets, the recipe and companions of every task trained on ImageNet-1k).

A task plugin is a Python file defining `Task` objects at module level (or a `TASKS` list), found in the built-in
`tasks/` folder, in installed packages' `transfer_eval.tasks` entry points and in folders given with `--tasks-dir`
(later ones override earlier ones of the same name; plugins.py). Plugins import from here:
`from transfer_eval.tasks import ImageSplit, LoadContext, Task`. This wing imports only
the shared pieces at the package's root (errors, io, paths).
"""

from transfer_eval.tasks.plugins import ENTRY_POINT_GROUP, discover, resolve
from transfer_eval.tasks.splits import (
    SPLITS,
    ImageSplit,
    LoadContext,
    SealedSplitRead,
    UnreadableImage,
    load_image,
    to_rgb,
)
from transfer_eval.tasks.task import Task, holdout

__all__ = [
    "ENTRY_POINT_GROUP", "SPLITS", "ImageSplit", "LoadContext", "SealedSplitRead", "Task", "UnreadableImage",
    "discover", "holdout", "load_image", "resolve", "spread", "to_rgb",
]  # fmt: skip
