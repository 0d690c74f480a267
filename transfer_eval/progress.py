"""Progress bars for every long step: shown on a terminal, silent in logs and pipes (TQDM_DISABLE=1 forces off)."""

from tqdm import tqdm


def bar(iterable, desc: str, unit: str = "it", **kwargs):
    return tqdm(iterable, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None, **kwargs)
