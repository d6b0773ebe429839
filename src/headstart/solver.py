"""The linear head on frozen features, solved rather than iterated.

A linear head on a frozen backbone's features is multinomial logistic regression: a convex
problem with one answer for each L2 strength. It is solved here by full-batch L-BFGS (scipy's,
with an analytic gradient) on standardised features, with the L2 strength ``C`` (scikit-learn's
convention: ``C * sum(loss) + ||W||^2 / 2``, the intercept not penalised) chosen by stratified
k-fold cross-validation over a grid, warm-started along the path from strong to weak
regularisation. The chosen solution is mapped back to the raw features, so the head stays a
plain ``nn.Linear`` that predicts without the scaler.

Selection reads each row's out-of-fold prediction: accuracy first, then log-loss to break
ties (many weak regularisations reach the same accuracy with worse-calibrated scores).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .splits import kfold

log = logging.getLogger("headstart")

DTYPE = torch.float64
PATIENCE = 3
# Decades from strong to weak regularisation (on standardised features), up to C = 10:
# weaker regularisation on separable data only grows the weights, which makes probabilities
# extreme and an exported model's float rounding visible, for no accuracy. Decades: each
# step is a solve per fold, and the fit's cost grows with the number of steps.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 6))


@dataclass
class LinearSolution:
    """``logits = X @ weight.T + bias`` on raw (unstandardised) features."""

    weight: np.ndarray  # (classes, features)
    bias: np.ndarray  # (classes,)
    C: float

    def logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return x.astype(np.float64, copy=False) @ self.weight.T + self.bias


@dataclass
class LinearFit:
    """The solution refitted on every given row, with what chose it."""

    solution: LinearSolution
    oof_logits: np.ndarray | None  # (n, classes): each row scored by the fold model that did not see it
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    path: list[dict] = field(default_factory=list)  # per C: out-of-fold accuracy and log-loss
    seconds: float = 0.0


class _Scaler:
    """Standardisation with a floor: a feature whose variance is under 1% of the average one
    (a near-constant channel) is scaled as if it had that 1%. Otherwise dividing by its tiny
    spread turns rounding noise into a strong signal, and the head mapped back to raw
    features carries weights large enough that float rounding moves its probabilities."""

    FLOOR = 1e-2

    def __init__(self, x: torch.Tensor):
        self.mean = x.mean(0)
        var = x.var(0, unbiased=False)
        floor = self.FLOOR * float(var.mean()) if float(var.mean()) > 0 else 1.0
        self.scale = torch.sqrt(var + floor)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def unscale(self, w: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) on standardised features -> the same function on raw features."""
        w_raw = w / self.scale
        return w_raw.numpy(), (b - w_raw @ self.mean).numpy()


def _solve(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, k: int, C: float,
           init: torch.Tensor | None, max_iter: int, tol: float) -> torch.Tensor:
    """argmin over (W | b) of sum_i w_i CE_i + ||W||^2 / (2 C), scaled by 1 / sum(w) for
    conditioning, by L-BFGS (scipy's, with an analytic gradient: the per-iteration overhead
    of a Python optimiser dominates small problems). Returns the (k, d + 1) parameters."""
    from scipy.optimize import minimize

    # float32 products (the matrix products are the whole cost), float64 for the optimiser
    zn = z.numpy().astype(np.float32, copy=False)
    n, d = zn.shape
    w = weights.numpy().astype(np.float64)
    total = float(w.sum())
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y.numpy()] = 1.0
    wn = (w / total).astype(np.float32)[:, None]
    lam = 1.0 / (C * total)

    def objective(theta: np.ndarray):
        params = theta.reshape(k, d + 1)
        W, b = params[:, :d], params[:, d]
        logits = zn @ W.T.astype(np.float32) + b.astype(np.float32)
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        s = e.sum(1, keepdims=True)
        logp = logits - np.log(s)
        loss = -float((wn * onehot * logp).sum(dtype=np.float64)) + 0.5 * lam * float((W * W).sum())
        g = (e / s - onehot) * wn
        grad = np.empty_like(params)
        grad[:, :d] = (g.T @ zn).astype(np.float64) + lam * W
        grad[:, d] = g.sum(0, dtype=np.float64)
        return loss, grad.ravel()

    x0 = init.numpy().astype(np.float64).ravel() if init is not None else np.zeros(k * (d + 1))
    res = minimize(objective, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-10, "maxcor": 10})
    return torch.from_numpy(res.x.reshape(k, d + 1))


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_logistic(x: np.ndarray | torch.Tensor, y: np.ndarray, num_classes: int, *, C: float,
                 sample_weight: np.ndarray | None = None, max_iter: int = 200, tol: float = 1e-4) -> LinearSolution:
    """One multinomial logistic regression at a given ``C``."""
    xt, yt, wt = _tensors(x, y, sample_weight)
    scaler = _Scaler(xt)
    params = _solve(scaler(xt), yt, wt, num_classes, C, None, max_iter, tol)
    weight, bias = scaler.unscale(params[:, :-1], params[:, -1])
    return LinearSolution(weight, bias, float(C))


def _tensors(x, y, sample_weight):
    xt = torch.as_tensor(np.asarray(x), dtype=DTYPE) if not isinstance(x, torch.Tensor) else x.to(DTYPE)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    wt = torch.ones(len(yt), dtype=DTYPE) if sample_weight is None else torch.as_tensor(sample_weight, dtype=DTYPE)
    return xt, yt, wt


def select_and_fit(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray,
    num_classes: int,
    *,
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    Cs=DEFAULT_CS,
    sample_weight: np.ndarray | None = None,
    augment: tuple[np.ndarray | torch.Tensor, np.ndarray] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> LinearFit:
    """Choose ``C`` by k-fold cross-validation (out-of-fold accuracy, then log-loss), then
    refit on every row. ``folds`` (pairs of training and held-out row indices) override
    ``n_folds``/``seed``; the out-of-fold logits of the chosen ``C`` come with the fit.

    ``augment``: extra training rows (features of augmented views) and the row of ``x`` each
    came from; a view trains only the folds whose training part holds its source row, so a
    held-out row is never seen through one of its views."""
    start = time.perf_counter()
    xt, yt, wt = _tensors(x, y, sample_weight)
    y_np = yt.numpy()
    if augment is not None:
        xa, src = augment
        xa, ya, wa = _tensors(xa, y_np[src], None if sample_weight is None else np.asarray(sample_weight)[src])
        src = np.asarray(src)
    Cs = sorted(float(c) for c in Cs)
    if folds is None:
        folds = kfold(y_np, n_folds, seed)

    def rows(index: np.ndarray):
        if augment is None:
            return xt[index], yt[index], wt[index]
        extra = torch.as_tensor(np.flatnonzero(np.isin(src, index)))
        return torch.cat([xt[index], xa[extra]]), torch.cat([yt[index], ya[extra]]), torch.cat([wt[index], wa[extra]])

    # Outer loop over C, inner over folds, each fold warm-started from its previous C; the
    # path stops once the best C has not changed for PATIENCE steps (past the optimum the
    # out-of-fold log-loss only rises, and weak regularisation is the slow end to solve).
    prepared = []
    for tr, va in folds:
        xr, yr, wr = rows(tr)
        scaler = _Scaler(xr)
        prepared.append((scaler(xr), yr, wr, scaler(xt[va]), va))
    warm: list[torch.Tensor | None] = [None] * len(folds)
    oof: list[np.ndarray] = []
    path: list[dict] = []
    best = 0
    fold_params: list[torch.Tensor | None] = []
    for i, C in enumerate(Cs):
        scores = np.zeros((len(y_np), num_classes))
        for f, (z, yr, wr, zv, va) in enumerate(prepared):
            warm[f] = _solve(z, yr, wr, num_classes, C, warm[f], max_iter, tol)
            scores[va] = (zv @ warm[f][:, :-1].T + warm[f][:, -1]).numpy()
        fold_params.append(torch.stack(warm).mean(0) if warm else None)
        oof.append(scores)
        path.append({"C": C, "accuracy": float((scores.argmax(1) == y_np).mean()), "log_loss": _log_loss(scores, y_np)})
        key = lambda j: (round(path[j]["accuracy"], 9), -path[j]["log_loss"])  # noqa: E731
        if key(i) > key(best):
            best = i
        if i - best >= PATIENCE:
            break
    C = Cs[best]
    # the final fit on every row starts from the folds' solutions at the chosen C, averaged
    # (each fold's standardisation is close to the whole set's): a few iterations, not a path
    xr, yr, wr = rows(np.arange(len(y_np)))
    scaler = _Scaler(xr)
    start_at = fold_params[best] if fold_params[best] is not None else None
    params = _solve(scaler(xr), yr, wr, num_classes, C, start_at, max_iter, tol)
    weight, bias = scaler.unscale(params[:, :-1], params[:, -1])
    seconds = time.perf_counter() - start
    log.info("head: logistic regression, C = %.3g chosen by %d-fold cross-validation (out-of-fold accuracy %.4f, "
             "log-loss %.4f); refitted on %d rows in %.1fs", C, len(folds), path[best]["accuracy"],
             path[best]["log_loss"], len(y_np), seconds)
    return LinearFit(LinearSolution(weight, bias, C), oof[best], list(folds), path, seconds)
