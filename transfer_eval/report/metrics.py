"""What a leaderboard cell can show (`leaderboard --metric`): test top-1 (the default), top-5, balanced top-1, or
the calibration of the test probabilities (expected calibration error, negative log-likelihood), each read from
the stored Result. A metric says which way is better (sorting follows it), how its numbers are written, whether
one seed has an interval (a share of the test images: Wilson) and whether ties with the best can be decided
(McNemar's test on the per-image hits within the first k predictions)."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_eval.errors import unknown_name


@dataclass(frozen=True)
class Metric:
    name: str  # as --metric takes it
    field: str  # the Result field
    label: str  # what a cell shows, for the legend
    lower_better: bool = False
    percent: bool = True  # a fraction shown x100 with 2 decimals; else the number with 3 decimals
    hits_k: int | None = None  # ties decided on the per-image hits in the first k predictions; None: no ties
    scaled: str | None = None  # the Result field after temperature scaling (json, csv)
    none: str = ""  # which results lack it (shown '-')
    high: float = 1.0  # the largest value it can take (its lowest is 0): intervals are clipped to [0, high]

    @property
    def proportion(self) -> bool:
        """A share of the test images (right answers among them): one seed's interval is Wilson's."""
        return self.hits_k is not None

    def text(self, x: float | None, missing: str) -> str:
        if x is None:
            return missing
        return f"{100 * x:.2f}" if self.percent else f"{x:.3f}"

    def short(self, x: float) -> str:
        """An interval bound: one decimal fewer than the value."""
        return f"{100 * x:.1f}" if self.percent else f"{x:.2f}"


_NO_PROBABILITIES = "few-shot ridge gives no probabilities; results stored before schema 4 have none"
METRICS = {
    m.name: m
    for m in (
        Metric("top1", "top1", "test top-1 %", hits_k=1),
        Metric("top5", "top5", "test top-5 % (a right answer among the first five predictions)", hits_k=5),
        Metric(
            "balanced",
            "balanced_top1",
            "test balanced top-1 % (the mean per-class recall)",
            none="a test split with label sets has none",
        ),
        Metric(
            "ece",
            "ece",
            "test expected calibration error % (15 equal-width bins of top-1 confidence, Guo et al. 2017), before "
            "temperature scaling (json and csv: ece_scaled, after)",
            lower_better=True,
            scaled="ece_scaled",
            none=_NO_PROBABILITIES,
        ),
        Metric(
            "nll",
            "nll",
            "test negative log-likelihood of the true class (nats), before temperature scaling (json and csv: "
            "nll_scaled, after)",
            lower_better=True,
            percent=False,
            scaled="nll_scaled",
            high=float("inf"),
            none=_NO_PROBABILITIES,
        ),
    )
}
DEFAULT = "top1"
CALIBRATION = ("ece", "nll", "temperature", "ece_scaled", "nll_scaled")  # the Result's calibration fields


def get(name: str) -> Metric:
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS)
    return METRICS[name]


def value(result, metric: Metric) -> float | None:
    v = getattr(result, metric.field)
    return None if v is None else float(v)
