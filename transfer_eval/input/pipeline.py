"""Loaders over a task's splits: how images reach the model (the transforms themselves are in transforms.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from transfer_eval.input import device_decode, device_resize, resample
from transfer_eval.input.transforms import eval_transform, seeded, train_transform
from transfer_eval.tasks import ImageSplit

MEMO_BYTES = 256 * 2**20  # a training split without augmentation is kept transformed in memory up to this size


class TransformedSplit(Dataset):
    """(array, label) pairs from an ImageSplit. With `memo_bytes` (training without augmentation, where the
    transform is deterministic and the split is read once an epoch), each image is decoded and transformed once
    per process and kept: later epochs get the very same arrays without decoding again. The pipeline asks for it
    only where the whole split's uint8 arrays fit in MEMO_BYTES."""

    def __init__(self, split: ImageSplit, transform, memo_bytes: int = 0):
        self.split, self.transform = split, transform
        self.memo: dict[int, object] | None = {} if memo_bytes else None

    def __len__(self):
        return len(self.split)

    def __getitem__(self, item):
        i, draw = item if isinstance(item, tuple) else (item, None)  # (index, draw seed) from EpochBatches
        if self.memo is None:
            with seeded(draw):
                return self.transform(self.split.image(i)), int(self.split.labels[i])
        if i not in self.memo:
            self.memo[i] = self.transform(self.split.image(i))
        return self.memo[i], int(self.split.labels[i])


def default_workers(device: torch.device) -> int:
    """Every core this process may use but one (for the training loop), shared among the processes of a
    torchrun on this machine; none on a CPU, where workers would compete with the model for the same cores."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(local, 1) - 1)


# --------------------------------------------------------------------------------------------------------------
# Input pipelines. Images reach the model one of two ways:
#
# - "cpu": timm's transforms in DataLoader workers (decode, crop, resize, flip) hand over uint8 batches; timm's
#   PrefetchLoader copies the next one on a side stream while the model works on this one, and the device
#   converts and normalises it, bit for bit as torchvision would on the CPU (a uint8 batch is 4x less to move
#   and pin than a float one). Optionally from a cache of decoded images already at the training resolution
#   (`--cache-images`, transfer_eval/cache/images.py), which leaves the workers only a crop and a small resize.
# - "device-resize": for small images (CIFAR's 32 px), the workers only hand over uint8 images at their own size
#   with each one's crop box and flip (drawn exactly as timm's RandomResizedCrop and torchvision's flip draw
#   them); two batched matrix products on the device make the 224 px inputs, PIL's very pixels
#   (transfer_eval/device_resize.py, resample.py). Moving 32 px images instead of 224 px ones is 49x less data.
# - "device-decode" (`--decode device`): the workers hand over JPEG files' bytes with the same draws; the device
#   decodes them (nvJPEG) and resizes them as device-resize does (transfer_eval/device_decode.py), batches ahead
#   in a thread on a side stream (prefetch.py).
#
# Training draws (crops, flips, RandAugment) are seeded per sample from (run seed, epoch, position): the same
# crops whatever the number of workers, the device, or whether the run was resumed.

SMALL_IMAGE_MAX = 64  # px, the longer side: images at most this big may be resized on the device


@dataclass(frozen=True)
class InputOptions:
    """What the user asked of the input pipeline (`run --device-resize/--cache-images/--workers`)."""

    device_resize: str = "auto"  # auto (on CUDA, for small images, where the augmentation allows) | on | off
    cache_images: bool = False  # decoded-image cache at the training resolution, for datasets of image files
    workers: int | None = None  # DataLoader workers; None: none on a CPU, up to 8 on a GPU
    decode: str = "cpu"  # cpu (PIL in the workers) | device (JPEG files decoded and resized on the device)


@dataclass(frozen=True)
class InputPlan:
    """What a run's pipelines do, decided once before it starts (`plan_input`) and recorded with the result."""

    native_size: tuple[int, int] | None = None  # (width, height) of the images, when resized on the device
    train_on_device: bool = False
    eval_on_device: bool = False
    cache_images: bool = False
    workers: int | None = None
    decode_on_device: bool = False  # evaluation and features from JPEG files decoded on the device
    train_decode_on_device: bool = False  # training input too (where the augmentation allows)
    no_training: bool = False  # a probe's run: its train split goes through the evaluation pipeline too

    @property
    def pixels(self) -> str | None:
        """What the feature cache keys apart: None where the pixels are the CPU transforms' very pixels."""
        return "device-decode" if self.decode_on_device else None

    def describe(self) -> str:
        def one(on_device, decode=False):
            if decode:
                return "device-decode"
            if on_device:
                w, h = self.native_size
                return f"device-resize from {w}x{h}"
            return "cpu" + ("+image-cache" if self.cache_images else "")

        ev = one(self.eval_on_device, self.decode_on_device)
        train = ev if self.no_training else one(self.train_on_device, self.train_decode_on_device)
        return train if train == ev else f"train: {train}; eval: {ev}"


def plan_input(
    options: InputOptions, split: ImageSplit, data_config: dict, device: torch.device, recipe: dict | None
) -> InputPlan:
    """Decide where images are resized. `split` (not test: it may be sealed) shows the images' size; `recipe`
    (None for probes) the training augmentation. Under `on`, a pipeline the device cannot do is an error."""
    from transfer_eval.errors import UserError

    if options.device_resize not in ("auto", "on", "off"):
        raise UserError(f"--device-resize {options.device_resize!r}: use auto, on or off")
    if options.decode not in ("cpu", "device"):
        raise UserError(f"--decode {options.decode!r}: use cpu or device")
    cache = options.cache_images and split.paths is not None
    decode = options.decode == "device"
    if decode:
        why = device_decode.unsuitable(split, data_config)
        if why or options.cache_images:
            raise UserError(f"--decode device: {why or 'it reads the files, not the image cache'}; use --decode cpu")
    # training input is decoded on the device too where its augmentation allows (else on the CPU: the record says)
    train_decode = decode and recipe is not None and _train_blocker(recipe) is None
    base = InputPlan(
        cache_images=cache,
        workers=options.workers,
        decode_on_device=decode,
        train_decode_on_device=train_decode,
        no_training=recipe is None,
    )
    if options.device_resize == "off" or (options.device_resize == "auto" and device.type != "cuda"):
        return base
    size, why = _native_size(split, data_config)
    train_why = why or (_train_blocker(recipe) if recipe is not None else None)
    if options.device_resize == "on" and (why or train_why):
        raise UserError(f"--device-resize on: {why or train_why}; use --device-resize auto or off")
    # a probe's training data goes through the evaluation pipeline
    return InputPlan(
        native_size=size,
        train_on_device=why is None if recipe is None else train_why is None,
        eval_on_device=why is None,
        cache_images=cache,
        workers=options.workers,
        decode_on_device=decode,
        train_decode_on_device=train_decode,
        no_training=recipe is None,
    )


def _native_size(split: ImageSplit, data_config: dict) -> tuple[tuple[int, int] | None, str | None]:
    """(the images' common size, None) when every probed image has one small size; else (None, why not)."""
    why = resample.cpu_only(data_config)
    if why:
        return None, why
    if len(split) == 0:
        return None, "the split is empty"
    sizes = {split.image(i).size for i in split.sample()}
    if len(sizes) > 1:
        return None, f"the images differ in size ({', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:3])}, ...)"
    ((w, h),) = sizes
    out = data_config["input_size"][-1]
    if max(w, h) > SMALL_IMAGE_MAX:
        return None, f"the images ({w}x{h}) are larger than {SMALL_IMAGE_MAX} px (use --cache-images for those)"
    if out < max(w, h):
        return None, f"the model's input ({out} px) is smaller than the images ({w}x{h}): that needs antialiasing"
    return (w, h), None


def _train_blocker(recipe: dict) -> str | None:
    if recipe.get("randaugment"):
        return "RandAugment works on PIL images in the CPU workers"
    return None


class Pipeline:
    """A Dataset for the DataLoader, its collate function, its worker count (None: default_workers), and
    `batches(loader)`: an iterator of (x, y), normalised float images and labels on the device."""

    def __init__(self, dataset: Dataset, batches, workers: int | None, collate=None):
        self.dataset, self.batches, self.workers, self.collate = dataset, batches, workers, collate


def pipeline(
    split: ImageSplit, data_config: dict, device: torch.device, plan: InputPlan | None = None, train: dict | None = None
) -> Pipeline:
    """The pipeline of one split: `train` holds the recipe's augmentation fields (augment, hflip, crop_scale,
    randaugment, random_erasing); None gives the evaluation pipeline."""
    plan = plan or InputPlan()
    augment = train is not None and train.get("augment", True)
    erasing = train.get("random_erasing", 0.0) if train is not None and augment else 0.0
    if train is None or not augment:
        transform = eval_transform(data_config, uint8=True)
    else:
        transform = train_transform(
            data_config,
            True,
            train.get("hflip", 0.5),
            train.get("crop_scale", (0.08, 1.0)),
            train.get("randaugment"),
            erasing,
            uint8=True,
        )
    normalise = Normalise(data_config, device, erasing)
    if plan.train_decode_on_device if train is not None else plan.decode_on_device:
        decoder = device_decode.DecodeResize(split, data_config, device, normalise)
        dataset = device_decode.Files(split, resample.geometry(data_config, train), transform, data_config)
        return Pipeline(dataset, decoder.batches, plan.workers, device_decode.collate)
    if plan.train_on_device if train is not None else plan.eval_on_device:
        resize = device_resize.DeviceResize(device, normalise)
        dataset = device_resize.NativeSplit(split, resample.geometry(data_config, train), transform, data_config)
        return Pipeline(dataset, lambda dl: map(resize, dl), plan.workers, collate=device_resize.collate)
    if plan.cache_images and split.paths is not None:
        from transfer_eval.input import image_cache as image_cache

        split = image_cache.cached(split, data_config, kind=image_cache.RAW if train is None else image_cache.JPEG)

    def batches(dl):
        from timm.data.loader import PrefetchLoader

        if dl.num_workers == 0:
            # Without workers the transforms run here, drawing from this process's generators: reading one batch
            # ahead would move those draws before the step they used to follow, and a resumed run would not see
            # the crops of an uninterrupted one. The same conversion, one batch at a time.
            return (
                normalise(x.to(device, non_blocking=True).float().div_(255), y.to(device, non_blocking=True))
                for x, y in dl
            )
        # timm's prefetcher copies the next batch on a side stream and scales it to [0, 1] there (mean 0, std 1:
        # x / 255, as torchvision's ToTensor computes it); the normalisation follows, bit for bit torchvision's.
        prefetch = PrefetchLoader(dl, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), device=device)
        return (normalise(x, y) for x, y in prefetch)

    from timm.data.loader import fast_collate

    c, h, w = data_config["input_size"]
    repeated = train is not None and not augment  # read epoch after epoch, the same arrays each time
    memo = MEMO_BYTES if repeated and len(split) * c * h * w <= MEMO_BYTES else 0
    return Pipeline(TransformedSplit(split, transform, memo), batches, plan.workers, collate=fast_collate)


class Normalise:
    """(x in [0, 1], y) on the device to normalised x, exactly as torchvision's Normalize computes it on the CPU
    (so a run's pixels do not depend on where they were normalised), then timm's random erasing where the recipe
    asks (after normalising, as timm's CPU transform erases)."""

    def __init__(self, data_config: dict, device: torch.device, erasing: float = 0.0):
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data_config["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.erase = None
        if erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(probability=erasing, device=device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.sub_(self.mean).div_(self.std)
        return (self.erase(x) if self.erase is not None else x), y


def loader(pipe: Pipeline, batch_size: int, device: torch.device, batch_sampler=None) -> DataLoader:
    """An in-order loader (evaluation, features; or over `batch_sampler`'s batches). Its workers persist: a loader
    iterated again (val after each learning rate) reuses them instead of starting new ones."""
    workers = default_workers(device) if pipe.workers is None else pipe.workers
    by = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size, "shuffle": False}
    return DataLoader(
        pipe.dataset,
        **by,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        collate_fn=pipe.collate,
    )


class EvalLoaders:
    """The evaluation pipeline of every split of a run (features, val, test) through one DataLoader: its workers
    start once, at the first pass, and serve each split's passes after it (persistent workers; the sampler names the
    split and the batch size of each pass). A sealed split stays sealed in the workers until it is unsealed here
    (the seal is in shared memory). With the decoded-image cache each split has a loader of its own, as the test
    split's cache entry is built only once it is unsealed."""

    def __init__(self, splits: dict[str, ImageSplit], data_config: dict, device: torch.device, plan: InputPlan):
        self.splits, self.cfg, self.device, self.plan = splits, data_config, device, plan
        self.own: dict = {}  # (name, batch size) -> (loader, pipe): the image cache's per-split loaders
        self.shared = None
        if not plan.cache_images:
            self.pipes = {name: pipeline(split, data_config, device, plan) for name, split in splits.items()}
            self.sampler = _Passes()
            first = next(iter(self.pipes.values()))
            self.shared = loader(
                Pipeline(_Union({n: p.dataset for n, p in self.pipes.items()}), None, first.workers, first.collate),
                1,
                device,
                batch_sampler=self.sampler,
            )

    def get(self, name: str, batch_size: int):
        """(loader, pipe) over split `name` in batches of `batch_size`, for inference.outputs."""
        if self.shared is None:
            if (name, batch_size) not in self.own:
                pipe = pipeline(self.splits[name], self.cfg, self.device, self.plan)
                self.own[name, batch_size] = loader(pipe, batch_size, self.device), pipe
            return self.own[name, batch_size]
        return _Pass(self.shared, self.sampler, name, len(self.splits[name]), batch_size), self.pipes[name]


class _Union(torch.utils.data.Dataset):
    def __init__(self, datasets: dict):
        self.datasets = datasets

    def __len__(self):
        return sum(len(d) for d in self.datasets.values())

    def __getitem__(self, item):
        name, i = item
        return self.datasets[name][i]


class _Passes(torch.utils.data.Sampler):
    """In-order batches of (split name, index) of the pass set last (`EvalLoaders.get`)."""

    def __init__(self):
        self.name, self.n, self.batch_size = None, 0, 1

    def __iter__(self):
        for start in range(0, self.n, self.batch_size):
            yield [(self.name, i) for i in range(start, min(start + self.batch_size, self.n))]

    def __len__(self):
        return -(-self.n // self.batch_size)


class _Pass:
    """One split's pass through the shared loader: iterating it points the sampler at the split, then iterates."""

    def __init__(self, shared: DataLoader, sampler: _Passes, name: str, n: int, batch_size: int):
        self.shared, self.sampler, self.name, self.n, self.batch_size = shared, sampler, name, n, batch_size
        self.num_workers = shared.num_workers

    def __len__(self):
        return -(-self.n // self.batch_size)

    def __iter__(self):
        self.sampler.name, self.sampler.n, self.sampler.batch_size = self.name, self.n, self.batch_size
        return iter(self.shared)


def batch_loader(pipe: Pipeline, batch_sampler, device: torch.device) -> DataLoader:
    """A loader over `batch_sampler`'s index lists (training: EpochBatches, which never ends, so one iterator
    serves the whole phase and its workers live as long). Its workers' base seed comes from a generator of its own,
    seeded by the sampler's seed (the run's), not from torch's global generator: starting its iterator (at a resume,
    or again after an out-of-memory back-off) draws nothing from the generator dropout and drop path use."""
    workers = default_workers(device) if pipe.workers is None else pipe.workers
    return DataLoader(
        pipe.dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        collate_fn=pipe.collate,
        generator=torch.Generator().manual_seed(int(getattr(batch_sampler, "seed", 0))),
    )


class EpochBatches(torch.utils.data.Sampler):
    """Endless micro-batches of indices (with `draws`, of (index, draw seed) pairs: see transforms.seeded).
    Epoch e is a permutation drawn from a generator seeded by (seed, e), cut into effective batches of
    `batch_size` (the last partial one dropped, unless the split is smaller than a batch); each effective batch
    is yielded as consecutive chunks of at most `micro_size`.

    Effective batch b is a pure function of (seed, b): a resumed run starts at its batch without reading the ones
    before it, and a smaller micro-batch (after running out of memory) splits the very same effective batch."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start_batch: int = 0,
        micro_size: int | None = None,
        rank: int = 0,
        world: int = 1,
        draws: bool = False,
    ):
        self.n, self.batch_size, self.seed, self.start, self.draws = n, batch_size, seed, start_batch, draws
        self.rank, self.world = rank, world
        self.micro = micro_size or batch_size
        self.per_epoch = max(1, n // batch_size)

    def _epoch(self, e: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        b = self.start
        while True:
            e, j = divmod(b, self.per_epoch)
            perm = self._epoch(e)
            for k in range(j, self.per_epoch):
                batch = perm[k * self.batch_size : (k + 1) * self.batch_size].tolist()
                share = len(batch) // self.world  # this process's contiguous share of the effective batch
                first = k * self.batch_size + self.rank * share  # its first sample's position in the epoch
                batch = batch[self.rank * share : (self.rank + 1) * share]
                if self.draws:
                    batch = [(i, self.draw(e, first + p)) for p, i in enumerate(batch)]
                for c in range(0, len(batch), self.micro):
                    yield batch[c : c + self.micro]
            b = (e + 1) * self.per_epoch

    def draw(self, epoch: int, position: int) -> int:
        """The draw seed of the sample at `position` of epoch `epoch` (transforms.seeded): a function of the run's seed,
        the epoch and the position alone."""
        return ((self.seed * 1_000_003 + epoch) << 32 | position) & (2**63 - 1)

    def chunks_per_batch(self) -> int:
        return -(-(min(self.batch_size, self.n) // self.world) // self.micro)
