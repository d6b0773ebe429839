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

Multi-label targets (``y`` an ``(n, K)`` 0/1 array rather than ``(n,)`` class indices; the
shape decides, there is no flag) get independent sigmoids instead of a softmax: the
objective is ``sum_i w_i sum_k BCE(y_ik, sigmoid(z_ik))``, each positive term optionally
multiplied by a per-label ``pos_weight`` (for rare labels), plus the same ``||W||^2 / (2 C)``.
With one ``C`` shared by the labels this is K independent binary logistic regressions.
There ``C`` is chosen by the lowest out-of-fold log-loss alone: the per-label decision
thresholds are tuned afterwards on those out-of-fold scores, so accuracy at probability 0.5
is not what will be deployed, and a proper score rewards the ranking and calibration that
threshold tuning needs. Subset accuracy and micro-F1 at 0.5 are recorded for the report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.splits import kfold

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
    """``logits = X @ weight.T + bias`` on raw (unstandardised) features. Multi-label: the
    K independent logits, one per label; the caller applies the sigmoid."""

    weight: np.ndarray  # (classes, features)
    bias: np.ndarray  # (classes,)
    C: float | list[float]  # multi-label: one per label

    def logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return x.astype(np.float64, copy=False) @ self.weight.T + self.bias


@dataclass
class LinearFit:
    """The solution refitted on every given row, with what chose it."""

    solution: LinearSolution
    oof_logits: np.ndarray | None  # (n, classes) or (n, labels): each row scored by the fold model that did not see it
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    # per C: out-of-fold accuracy and log-loss; multi-label: subset accuracy and micro-F1 at
    # probability 0.5, and the mean binary cross-entropy per row and label
    path: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # the weight of the extra rows (select_and_fit's ``extra``) chosen out-of-fold, and each
    # weight's best out-of-fold accuracy and log-loss; None without extra rows
    extra_weight: float | None = None
    extra_path: list[dict] | None = None


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


def _softmax_objective(zn: np.ndarray, y: np.ndarray, wn: np.ndarray, k: int, lam: float):
    """Loss and gradient of the multinomial problem (``y``: class indices)."""
    n, d = zn.shape
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0

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

    return objective


def _sigmoid_objective(zn: np.ndarray, y: np.ndarray, wn: np.ndarray, k: int, lam: float,
                       pos_weight: np.ndarray | None):
    """Loss and gradient of K independent sigmoids (``y``: an (n, K) 0/1 matrix).

    With ``p`` the positive weight, ``BCE = -(p y log s(z) + (1 - y) log(1 - s(z)))`` is
    ``p softplus(-z)`` for a positive and ``softplus(z)`` for a negative: one softplus of the
    signed logit, never the difference of two large terms (``softplus(z) - z`` for a
    confident positive). Its gradient in ``z`` is ``sign * weight * s(sign * z)``; sign and
    weight are folded with the row weights once.

    The products stay float32 as in the softmax, the elementwise terms are float64: their
    float32 rounding, summed over n * K terms (the softmax has one per row), adds to the
    noise under which L-BFGS's line search gives up near the optimum; they cost n * K, the
    products n * K * d."""
    d = zn.shape[1]
    t = y != 0
    sign = np.where(t, -1.0, 1.0)
    weight = wn.astype(np.float64)
    if pos_weight is not None:
        weight = weight * np.where(t, np.asarray(pos_weight, dtype=np.float64), 1.0)
    signed = sign * weight

    def objective(theta: np.ndarray):
        params = theta.reshape(k, d + 1)
        W, b = params[:, :d], params[:, d]
        logits = (zn @ W.T.astype(np.float32) + b.astype(np.float32)) * sign  # float64 from here
        e = np.exp(-np.abs(logits))
        loss = float((weight * (np.maximum(logits, 0) + np.log1p(e))).sum()) + 0.5 * float((lam * W * W).sum())
        g = (signed * np.where(logits >= 0, 1.0, e) / (1 + e)).astype(np.float32)  # the sigmoid, without overflow
        grad = np.empty_like(params)
        grad[:, :d] = (g.T @ zn).astype(np.float64) + lam * W
        grad[:, d] = g.sum(0, dtype=np.float64)
        return loss, grad.ravel()

    return objective


def _solve(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, k: int, C: float | list[float],
           init: torch.Tensor | None, max_iter: int, tol: float, pos_weight: np.ndarray | None = None) -> torch.Tensor:
    """argmin over (W | b) of sum_i w_i CE_i + ||W||^2 / (2 C), scaled by 1 / sum(w) for
    conditioning, by L-BFGS (scipy's, with an analytic gradient: the per-iteration overhead
    of a Python optimiser dominates small problems). Returns the (k, d + 1) parameters.
    ``CE_i`` is the softmax cross-entropy for class indices ``y``, the sum of the K binary
    cross-entropies (positives weighted by ``pos_weight``) for an (n, K) 0/1 ``y``."""
    from scipy.optimize import minimize

    # float32 products (the matrix products are the whole cost), float64 for the optimiser
    zn = z.numpy().astype(np.float32, copy=False)
    d = zn.shape[1]
    w = weights.numpy().astype(np.float64)
    total = float(w.sum())
    wn = (w / total).astype(np.float32)[:, None]
    # multi-label: C may be one per label (the labels' problems are independent)
    lam = 1.0 / (np.asarray(C, dtype=np.float64).reshape(-1, 1) * total) if y.ndim == 2 else 1.0 / (float(C) * total)
    if y.ndim == 2:
        objective = _sigmoid_objective(zn, y.numpy(), wn, k, lam, pos_weight)
    else:
        objective = _softmax_objective(zn, y.numpy(), wn, k, lam)

    x0 = init.numpy().astype(np.float64).ravel() if init is not None else np.zeros(k * (d + 1))
    res = minimize(objective, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-10, "maxcor": 10})
    return torch.from_numpy(res.x.reshape(k, d + 1))


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy per row; multi-label: mean binary cross-entropy per row and label."""
    if y.ndim == 2:
        return float(_label_log_loss(logits, y).mean())  # every label has every row: the mean of the labels' means
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _label_log_loss(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each label's mean binary cross-entropy over the rows."""
    return (np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits))) - y * logits).mean(0)


def _multilabel_scores(logits: np.ndarray, y: np.ndarray) -> dict:
    """Subset accuracy (every label of a row right) and micro-F1, both at probability 0.5."""
    pred, true = logits > 0, y != 0
    tp = int((pred & true).sum())
    wrong = int((pred != true).sum())  # false positives + false negatives
    return {"accuracy": float((pred == true).all(1).mean()),
            "micro_f1": 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0}


def _check_targets(y: np.ndarray, num_classes: int, pos_weight) -> np.ndarray | None:
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(f"multi-label y has {y.shape[1]} columns, num_classes is {num_classes}")
        if pos_weight is not None:
            pos_weight = np.asarray(pos_weight, dtype=np.float64)
            if pos_weight.shape != (num_classes,):
                raise ValueError(f"pos_weight must have shape ({num_classes},), not {pos_weight.shape}")
        return pos_weight
    if pos_weight is not None:
        raise ValueError("pos_weight applies to multi-label (n, K) targets; weight classes with sample_weight")
    return None


def fit_logistic(x: np.ndarray | torch.Tensor, y: np.ndarray, num_classes: int, *, C: float | list[float],
                 sample_weight: np.ndarray | None = None, pos_weight: np.ndarray | None = None,
                 extra: tuple[np.ndarray | torch.Tensor, np.ndarray] | None = None, extra_weight: float | None = None,
                 max_iter: int = 200, tol: float = 1e-4) -> LinearSolution:
    """One multinomial logistic regression at a given ``C``; for an (n, K) 0/1 ``y``
    (multi-label, ``num_classes`` = K), K independent sigmoids, the positive term of label
    k multiplied by ``pos_weight[k]`` (default 1), ``C`` one for all or one per label.
    ``extra`` rows (features, class indices) train too, at ``extra_weight`` (none at 0 or
    None), as in :func:`select_and_fit`."""
    xt, yt, wt = _tensors(x, y, sample_weight)
    if extra_weight:
        xt, yt, wt = _with_extra(xt, yt, wt, _extra_tensors(extra, yt.ndim == 2), extra_weight)
    pos_weight = _check_targets(yt, num_classes, pos_weight)
    scaler = _Scaler(xt)
    params = _solve(scaler(xt), yt, wt, num_classes, C, None, max_iter, tol, pos_weight)
    weight, bias = scaler.unscale(params[:, :-1], params[:, -1])
    return LinearSolution(weight, bias, [float(c) for c in C] if np.ndim(C) else float(C))


def _tensors(x, y, sample_weight):
    xt = torch.as_tensor(np.asarray(x), dtype=DTYPE) if not isinstance(x, torch.Tensor) else x.to(DTYPE)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    wt = torch.ones(len(yt), dtype=DTYPE) if sample_weight is None else torch.as_tensor(sample_weight, dtype=DTYPE)
    return xt, yt, wt


def _walk_path(prepared: list, y_np: np.ndarray, num_classes: int, Cs: list[float], max_iter: int, tol: float,
               pos_weight) -> tuple[list[np.ndarray], list[dict], int, np.ndarray, list[torch.Tensor | None]]:
    """The regularisation path over ``Cs`` (ascending) on prepared folds, each a tuple
    (standardised training features, their targets, their weights, standardised held-out
    features, the held-out rows' indices into ``y_np``). Returns the out-of-fold logits per
    C, the path's scores, the best step (multi-label: each label's best step) and the folds'
    mean solution per C.

    Outer loop over C, inner over folds, each fold warm-started from its previous C; the
    path stops once the best C has not changed for PATIENCE steps (past the optimum the
    out-of-fold log-loss only rises, and weak regularisation is the slow end to solve)."""
    multilabel = y_np.ndim == 2
    warm: list[torch.Tensor | None] = [None] * len(prepared)
    oof: list[np.ndarray] = []
    path: list[dict] = []
    best = 0
    label_best = np.zeros(num_classes, dtype=np.int64)  # multi-label: each label's best step
    fold_params: list[torch.Tensor | None] = []
    for i, C in enumerate(Cs):
        scores = np.zeros((len(y_np), num_classes))
        for f, (z, yr, wr, zv, va) in enumerate(prepared):
            warm[f] = _solve(z, yr, wr, num_classes, C, warm[f], max_iter, tol, pos_weight)
            scores[va] = (zv @ warm[f][:, :-1].T + warm[f][:, -1]).numpy()
        fold_params.append(torch.stack(warm).mean(0) if warm else None)
        oof.append(scores)
        if multilabel:
            per_label = _label_log_loss(scores, y_np)
            path.append({"C": C, **_multilabel_scores(scores, y_np), "log_loss": _log_loss(scores, y_np),
                         "label_log_loss": per_label.tolist()})
            # each label keeps the C of its own lowest out-of-fold log-loss; the path stops
            # once no label's choice has changed for PATIENCE steps
            better = per_label < np.asarray([path[b]["label_log_loss"][j] for j, b in enumerate(label_best)])
            label_best = np.where(better, i, label_best)
            if i - int(label_best.max()) >= PATIENCE:
                break
            continue
        path.append({"C": C, "accuracy": float((scores.argmax(1) == y_np).mean()), "log_loss": _log_loss(scores, y_np)})
        key = lambda j: (round(path[j]["accuracy"], 9), -path[j]["log_loss"])  # noqa: E731
        if key(i) > key(best):
            best = i
        if i - best >= PATIENCE:
            break
    return oof, path, best, label_best, fold_params


def _with_extra(xr: torch.Tensor, yr: torch.Tensor, wr: torch.Tensor, extra, weight: float):
    """Training rows with the ``extra`` rows (features, class indices) appended at ``weight``
    (none at 0)."""
    if extra is None or weight == 0:
        return xr, yr, wr
    xe, ye = extra
    return (torch.cat([xr, xe]), torch.cat([yr, ye]), torch.cat([wr, torch.full((len(ye),), float(weight), dtype=DTYPE)]))


def _extra_tensors(extra, multilabel: bool):
    if extra is None:
        return None
    if multilabel:
        raise ValueError("extra rows are class indices: one label per row only")
    xe, ye, _ = _tensors(*extra, None)
    return xe, ye


def _walk_weights(folds: list[tuple], weights: list[float | None], y_np: np.ndarray, num_classes: int, Cs: list[float],
                  max_iter: int, tol: float, pos_weight) -> list[tuple[float | None, tuple]]:
    """One regularisation path (:func:`_walk_path`) per weight of the extra rows, on folds
    given as (training features, their targets, their weights, held-out features, the held-out
    rows' indices, the extra rows or None); each fold standardised on its training rows with
    the extra rows at that weight (none at 0 or None)."""
    walks = []
    for weight in weights:
        prepared = []
        for xr, yr, wr, xv, va, extra in folds:
            xr, yr, wr = _with_extra(xr, yr, wr, extra, weight or 0.0)
            scaler = _Scaler(xr)
            prepared.append((scaler(xr), yr, wr, scaler(xv), va))
        walks.append((weight, _walk_path(prepared, y_np, num_classes, Cs, max_iter, tol, pos_weight)))
    return walks


def _best_weight(walks: list[tuple[float, tuple]]) -> tuple[float, tuple, list[dict]]:
    """Among ``(weight, _walk_path's result)`` pairs, the weight whose best C scores best
    out-of-fold (accuracy, then log-loss; the earlier weight on a tie), its walk, and each
    weight's best scores."""
    def key(walk):
        path, best = walk[1], walk[2]
        return round(path[best]["accuracy"], 9), -path[best]["log_loss"]

    chosen = max(range(len(walks)), key=lambda i: (key(walks[i][1]), -i))
    scores = [{"weight": w, **walk[1][walk[2]]} for w, walk in walks]
    return walks[chosen][0], walks[chosen][1], scores


def select_on_fold_features(parts: list[tuple[np.ndarray | torch.Tensor, np.ndarray, np.ndarray | torch.Tensor, np.ndarray]],
                            n: int, y: np.ndarray, num_classes: int, *, Cs=DEFAULT_CS,
                            sample_weights: list[np.ndarray] | None = None, extras: list[tuple] | None = None,
                            extra_weights=(1.0,), max_iter: int = 100,
                            tol: float = 1e-4) -> tuple[float, np.ndarray, list[dict], float | None]:
    """``C`` chosen by cross-validation when each fold has features of its own: a fold's
    encoder was tuned on that fold's training part, so its held-out rows' features come from a
    model that never saw them. ``parts``: per fold (training features, their class indices,
    held-out features, the held-out rows' positions in ``y``, of length ``n``). Chosen like
    :func:`select_and_fit` (out-of-fold accuracy, then log-loss). Returns the chosen C, the
    out-of-fold logits at that C (rows no fold held out stay 0), the path and the chosen
    weight of the extra rows (None without them).
    ``sample_weights``: per fold, the training rows' weights. ``extras``: per fold, extra
    training rows (features by that fold's encoder, class indices) that are never scored, at
    each of ``extra_weights``; the weight is chosen with C (:func:`select_and_fit`)."""
    y_np = np.asarray(y)
    if len(y_np) != n:
        raise ValueError(f"{len(y_np)} targets for {n} held-out rows")
    Cs = sorted(float(c) for c in Cs)
    weights = [float(w) for w in extra_weights] if extras is not None else [None]
    folds = [(*_tensors(xr, yr, None if sample_weights is None else sample_weights[f]),
              torch.as_tensor(np.asarray(xv), dtype=DTYPE) if not isinstance(xv, torch.Tensor) else xv.to(DTYPE),
              np.asarray(va), None if extras is None else _extra_tensors(extras[f], y_np.ndim == 2))
             for f, (xr, yr, xv, va) in enumerate(parts)]
    walks = _walk_weights(folds, weights, y_np, num_classes, Cs, max_iter, tol, None)
    weight, (oof, path, best, _, _), _ = _best_weight(walks)
    return Cs[best], oof[best], path, weight


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
    extra: tuple[np.ndarray | torch.Tensor, np.ndarray] | None = None,
    extra_weights=(1.0,),
    pos_weight: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> LinearFit:
    """Choose ``C`` by k-fold cross-validation (out-of-fold accuracy, then log-loss), then
    refit on every row. ``folds`` (pairs of training and held-out row indices) override
    ``n_folds``/``seed``; the out-of-fold logits of the chosen ``C`` come with the fit.

    Multi-label (``y`` an (n, K) 0/1 array, ``num_classes`` = K): independent sigmoids,
    ``pos_weight`` as in :func:`fit_logistic`, default folds by iterative stratification,
    and ``C`` chosen **per label** by the lowest out-of-fold log-loss of that label (its
    mean binary cross-entropy) alone: the labels are independent problems, a rare label may
    want stronger regularisation than a frequent one, and the per-label thresholds are tuned
    afterwards on the out-of-fold scores, so accuracy at 0.5 is not what gets deployed. The
    solution's ``C`` is then the list of the labels' values. The path also records subset
    accuracy and micro-F1 at 0.5; ``oof_logits`` are the (n, K) raw logits.

    ``augment``: extra training rows (features of augmented views) and the row of ``x`` each
    came from; a view trains only the folds whose training part holds its source row, so a
    held-out row is never seen through one of its views.

    ``extra``: rows (features, class indices; one label per row) that train every fold and
    the final fit and are never scored, such as each class's name embedded as a text. Their
    weight is chosen with C: each of ``extra_weights`` walks its own path, and the weight
    whose best C scores best out-of-fold (accuracy, then log-loss) is kept; a weight of 0
    leaves them out, so the data can refuse rows that mislead."""
    start = time.perf_counter()
    xt, yt, wt = _tensors(x, y, sample_weight)
    pos_weight = _check_targets(yt, num_classes, pos_weight)
    multilabel = yt.ndim == 2
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
        views = torch.as_tensor(np.flatnonzero(np.isin(src, index)))
        return torch.cat([xt[index], xa[views]]), torch.cat([yt[index], ya[views]]), torch.cat([wt[index], wa[views]])

    extra_t = _extra_tensors(extra, multilabel)
    walks = _walk_weights([(*rows(tr), xt[va], va, extra_t) for tr, va in folds],
                          [float(w) for w in extra_weights] if extra is not None else [None],
                          y_np, num_classes, Cs, max_iter, tol, pos_weight)
    weight, (oof, path, best, label_best, fold_params), weight_scores = _best_weight(walks) if extra is not None \
        else (None, walks[0][1], None)
    # the final fit on every row starts from the folds' solutions at the chosen C, averaged
    # (each fold's standardisation is close to the whole set's): a few iterations, not a path
    xr, yr, wr = _with_extra(*rows(np.arange(len(y_np))), extra_t, weight or 0.0)
    scaler = _Scaler(xr)
    if multilabel:
        C = [Cs[int(b)] for b in label_best]
        start_at = torch.stack([fold_params[int(b)][j] for j, b in enumerate(label_best)])
        chosen_oof = np.column_stack([oof[int(b)][:, j] for j, b in enumerate(label_best)])
    else:
        C = Cs[best]
        start_at = fold_params[best] if fold_params[best] is not None else None
        chosen_oof = oof[best]
    params = _solve(scaler(xr), yr, wr, num_classes, C, start_at, max_iter, tol, pos_weight)
    head_weight, bias = scaler.unscale(params[:, :-1], params[:, -1])
    seconds = time.perf_counter() - start
    if multilabel:
        scores = {**_multilabel_scores(chosen_oof, y_np), "log_loss": _log_loss(chosen_oof, y_np)}
        log.info("head: %d independent sigmoids, C per label (%s) chosen by %d-fold cross-validation (out-of-fold "
                 "log-loss %.4f, subset accuracy %.4f and micro-F1 %.4f at 0.5); refitted on %d rows in %.1fs",
                 num_classes, ", ".join(f"{c:.3g}" for c in C), len(folds), scores["log_loss"], scores["accuracy"],
                 scores["micro_f1"], len(y_np), seconds)
    else:
        extra_note = "" if extra is None else f", extra rows at weight {weight:g} (of {', '.join(f'{w:g}' for w in extra_weights)})"
        log.info("head: logistic regression, C = %.3g%s chosen by %d-fold cross-validation (out-of-fold accuracy %.4f, "
                 "log-loss %.4f); refitted on %d rows in %.1fs", C, extra_note, len(folds), path[best]["accuracy"],
                 path[best]["log_loss"], len(y_np), seconds)
    return LinearFit(LinearSolution(head_weight, bias, C), chosen_oof, list(folds), path, seconds, weight, weight_scores)
