"""Task groups: named lists of tasks. A group is what a leaderboard's mean is over (`leaderboard --group NAME`), and
a name for all its tasks on the command line (`run -t vtab1k` runs the 19 VTAB-1k tasks). A group may be made of
parts (VTAB-1k's Natural, Specialized and Structured), each with its own mean."""

from __future__ import annotations

from dataclasses import dataclass

VTAB_PARTS = (
    ("Natural", ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397")),
    ("Specialized", ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy")),
    (
        "Structured",
        (
            "clevr_count",
            "clevr_dist",
            "dmlab",
            "kitti",
            "dsprites_loc",
            "dsprites_ori",
            "smallnorb_azi",
            "smallnorb_ele",
        ),
    ),
)  # the folder names of NOAH's get_vtab1k.py; the tasks are vtab1k_<folder> (tasks/vtab1k.py)
VTAB_PREFIX = "vtab1k_"


@dataclass(frozen=True)
class Group:
    name: str
    tasks: tuple[str, ...]
    description: str
    parts: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (part name, its tasks), covering `tasks` in order

    @property
    def part_names(self) -> list[str]:
        return [p for p, _ in self.parts]


GROUPS = {
    g.name: g
    for g in (
        Group(
            "paper6",
            ("inat2018", "inat2019", "cifar10", "cifar100", "stanford_cars", "flowers102"),
            "the six transfer sets of Touvron et al., 'Three things everyone should know about Vision Transformers' "
            "(2022): iNat-18, iNat-19, CIFAR-10, CIFAR-100, Stanford Cars, Flowers-102",
        ),
        Group("cifar", ("cifar10", "cifar100"), "CIFAR-10 and CIFAR-100"),
        Group("inat", ("inat2018", "inat2019"), "iNaturalist 2018 and 2019"),
        Group("demo", ("digits",), "the offline demo task"),
        Group(
            "vtab1k",
            tuple(VTAB_PREFIX + t for _, ts in VTAB_PARTS for t in ts),
            "VTAB-1k (Zhai et al. 2019), as the parameter-efficient transfer papers run it: 19 tasks of 1,000 "
            "training images in three groups (Natural, Specialized, Structured)",
            tuple((p, tuple(VTAB_PREFIX + t for t in ts)) for p, ts in VTAB_PARTS),
        ),
    )
}


def expand(names: list, tasks=()) -> list:
    """Task names with each group name replaced by its tasks (other names and objects as they are); a name in
    `tasks` (a registered task's) stays a task name, even where a group has that name too."""
    out = []
    for n in names:
        out += list(GROUPS[n].tasks) if isinstance(n, str) and n in GROUPS and n not in tasks else [n]
    return list(dict.fromkeys(out))
