"""The linear probe's solver (methods/logistic.py) against scikit-learn's LogisticRegression on the same data:
the same chosen C, the same test predictions, the same coefficients; and its own contracts (chunking, the binary
model, capped fits recorded)."""

import warnings

import numpy as np
import pytest

from transfer_eval.methods import logistic, probe

GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
TOL = 1e-6


def sklearn_probe(train, val, c_grid, tol=TOL):
    """The probe's protocol written out with scikit-learn: standardise on train, fit each C of the coarse grid
    then the fine grid around the best (cold starts), ties to the smaller C, refit on train+val."""
    from sklearn.linear_model import LogisticRegression

    (xtr, ytr), (xva, yva) = train, val

    def fit(x, y, c):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LogisticRegression(C=c, tol=tol, max_iter=100_000).fit(x, y)

    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    scores = {}
    for c in c_grid:
        scores[c] = (fit((xtr - mu) / sd, ytr, c).predict((xva - mu) / sd) == yva).mean()
    grid = sorted(c_grid)
    i = grid.index(min(c for c in scores if scores[c] == max(scores.values())))
    for c in np.logspace(np.log10(grid[max(i - 1, 0)]), np.log10(grid[min(i + 1, len(grid) - 1)]), 5):
        scores.setdefault(float(c), (fit((xtr - mu) / sd, ytr, float(c)).predict((xva - mu) / sd) == yva).mean())
    best = min(c for c in scores if scores[c] == max(scores.values()))
    xall, yall = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    mu, sd = xall.mean(0), xall.std(0) + 1e-6
    clf = fit((xall - mu) / sd, yall, best)
    return best, clf, mu, sd


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    return (x[:900], y[:900]), (x[900:1200], y[900:1200]), (x[1200:], y[1200:])


def blobs(n=900, d=24, k=7, seed=1):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 1.2
    y = rng.integers(0, k, n)
    x = (means[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d) + 3.0).astype(np.float32)
    return (x[:500], y[:500]), (x[500:700], y[500:700]), (x[700:], y[700:])


@pytest.mark.parametrize("make", [digits, blobs], ids=["digits", "synthetic"])
def test_probe_agrees_with_scikit_learn(make):
    train, val, (xte, yte) = make()
    k = int(max(train[1].max(), val[1].max())) + 1
    ours = probe.linear_probe(train, val, k, c_grid=GRID, tol=TOL)
    best, clf, mu, sd = sklearn_probe(train, val, GRID)
    assert ours["selection"]["chosen"]["C"] == pytest.approx(best)
    assert ours["selection"]["not_converged"] == []
    pred = (xte @ ours["head_weight"].T + ours["head_bias"]).argmax(1)
    ref = clf.predict((xte - mu) / sd)
    assert (pred == ref).mean() >= 0.99
    # coefficients on the standardised features: ours unfolded from the head (weight = coef / sd)
    coef = ours["head_weight"].astype(np.float64) * sd
    scale = np.abs(clf.coef_).max()
    assert np.abs(coef - clf.coef_).max() <= 1e-3 * scale, np.abs(coef - clf.coef_).max() / scale


def test_chunking_and_warm_starts_do_not_change_the_solution():
    (x, y), _, _ = blobs()
    rows_one = logistic.Rows([(x, y)], "cpu", chunk_rows=len(y))
    rows_many = logistic.Rows([(x[:123], y[:123]), (x[123:], y[123:])], "cpu", chunk_rows=37)  # ragged chunks
    mean, std = rows_one.moments()
    assert np.allclose(mean, x.mean(0), atol=1e-5) and np.allclose(std, x.std(0), rtol=1e-4)
    assert np.allclose(rows_many.moments()[1], std)
    classes = np.unique(y)
    one = logistic.fit(logistic.Standardised(rows_one, mean, std), classes, 1.0)
    many = logistic.fit(
        logistic.Standardised(rows_many, mean, std),
        classes,
        1.0,
        start=logistic.fit(logistic.Standardised(rows_many, mean, std), classes, 0.1),
    )
    assert one.converged and many.converged
    assert np.abs(one.coef - many.coef).max() < 1e-3 * np.abs(one.coef).max()


def test_two_classes_is_scikit_learns_binary_model():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int) * 3  # labels 0 and 3 of a 4-class task
    rows = logistic.Rows([(x, y)], "cpu", 64)
    mean, std = rows.moments()
    f = logistic.fit(logistic.Standardised(rows, mean, std), np.array([0, 3]), 0.5)
    ref = LogisticRegression(C=0.5, tol=1e-8, max_iter=10_000).fit((x - mean) / std, y)
    assert f.coef.shape == (1, 5) and np.abs(f.coef - ref.coef_).max() < 1e-3
    weight, bias = logistic.as_head(f, mean, std, 4)
    pred = (x @ weight.T + bias).argmax(1)
    assert np.array_equal(pred, ref.predict((x - mean) / std))  # classes 1 and 2, absent, are never predicted


def test_a_fit_stopped_by_its_cap_is_recorded():
    train, val, _ = blobs()
    out = probe.linear_probe(train, val, 7, c_grid=(0.1, 1.0, 10.0), max_iter=3)
    assert out["selection"]["max_iter"] == 3
    assert set(out["selection"]["not_converged"]) >= {"1", "10", "refit"}
    assert all(n <= 3 for n in out["selection"]["iterations"].values())
    done = probe.linear_probe(train, val, 7, c_grid=(0.1, 1.0, 10.0))
    assert done["selection"]["not_converged"] == [] and "torch" in done["selection"]["solver"]
