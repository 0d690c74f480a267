"""Device batches prepared ahead, in a thread: while the model works on batch k, the next batches are decoded and
resized (`--decode device`) on a side CUDA stream, so that the host's part of that work (handing the JPEG bytes to
nvJPEG, launching the resize's kernels) overlaps the model's instead of adding to it, as timm's PrefetchLoader
overlaps the copies of the CPU path.

Only what draws nothing runs in the thread: the samples' random draws are made in the DataLoader workers (seeded per
sample), and the normalisation and random erasing (which draws from the run's generators) follow in the caller's
thread, in order. The caller's stream waits for each batch's event before using it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Iterable, Iterator

import torch

DEPTH = 2  # batches made ahead


def ahead(batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device, depth: int = DEPTH) -> Iterator:
    """The tuples of tensors of `batches`, computed `depth` ahead in a thread (on a side stream on CUDA). An
    exception in the thread is raised here, at the batch it replaced; leaving the loop early stops the thread."""
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for item in batches:
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((item, event, None)):
                        return
            put((end, None, None))
        except BaseException as e:  # handed to the caller, raised there
            put((None, None, e))

    thread = threading.Thread(target=work, name="transfer-eval-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, event, error = slots.get()
            if error is not None:
                raise error
            if item is end:
                return
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for t in item:
                    t.record_stream(current)  # made on the side stream, used on this one
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                slots.get_nowait()
        thread.join(timeout=5)
