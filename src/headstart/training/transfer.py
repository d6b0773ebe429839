"""The transfer recipes, written once for every kind of backbone.

A recipe sees its data through a :class:`Backend` (images, a transformer, word vectors): the
frozen backbone's features of every item, a training phase that updates backbone weights,
and the logits of a model on some items. Everything else lives here:

- **the probe**: a linear head on the frozen features is solved (:mod:`headstart.training.solver`:
  logistic regression, L2 strength by cross-validation, refitted on every training row); a
  head with hidden layers is trained by minibatches with the same selection rules (epochs
  chosen on held-out folds, then a refit);
- **phase 2**: the top blocks (``fine-tune``) or everything (``full``) trained on the
  items, early-stopped on a held-out part, and refitted on every row when asked and the
  time budget allows;
- **auto**: the probe, then phase 2 when the data and the time budget allow it, kept only
  if it beats the probe on the same held-out rows;
- **the protocol** (:mod:`headstart.data.splits`): with no validation set every reported number
  is out-of-fold or from a held-out fold, never from rows the scoring model trained on.

Items are numbered once: the training data's rows ``0..n-1``, then the validation set's.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol as TypingProtocol

import numpy as np
import torch
from torch import nn

from . import distributed
from .contrastive import FoldEmbeddings, refit_steps, step_budget
from ..config import TrainConfig
from ..errors import DataError
from .solver import LinearFit, select_and_fit
from ..data.splits import Protocol, fold_count, kfold, plan_validation
from ..objectives import objective_for
from .loop import EpochRecord, OverBudget, past_deadline, train_head

log = logging.getLogger("headstart")

# auto tries phase 2 only when the smallest class has at least this many training rows: with
# fewer, a held-out fold holds a handful of rows per class and cannot tell two recipes apart,
# and fine-tuning a backbone on a few examples per class mostly memorises them.
AUTO_MIN_PER_CLASS = 20
# For transformer text with one label per row, auto tries ``contrastive`` (not ``full``) while
# the smallest class has at most this many training rows. Measured on test rows
# (docs/benchmarks.md): with 64 per class (SST-2, GoEmotions; six draws) ``full`` lost to the
# probe on its held-out rows while ``contrastive`` scored 2.5 to 11.7 points above it; with 128
# (SST-2, three draws) contrastive led the probe by 4.6 to 6.3 points and ``full`` trailed it by
# 6.6 to 10.2, with 256 (SST-2, two draws) contrastive led ``full`` by 3.6 and 7.9. At 512 per class
# its lead over ``full`` was down to 1.9 points (one draw) for nine times ``full``'s time, the
# whole CPU budget; above the cap ``full``, which wins with thousands of rows, is tried.
AUTO_CONTRASTIVE_MAX_PER_CLASS = 256
# The default time budget on a CPU (seconds): the probe always runs; phase 2 and refits only
# when they fit. On a GPU there is no default limit.
CPU_TIME_BUDGET = 600.0
# Under cross-validation the contrastive recipe tunes the encoder once per fold: it uses at
# most this many folds (every row is scored once out-of-fold when all of them run: the time
# budget or auto's stop for futility can end them sooner), at 60% of five folds' cost.
CONTRASTIVE_FOLDS = 3
# Transformer text with one label per row: each class's name, embedded as a text, is one more
# training row of its class for a solved head, at the weight from this grid (relative to a
# labelled row's 1) that scores best out-of-fold with the head's C; 0 leaves the names out
# when they mislead. The names never count among the scored rows.
NAME_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0)


class Backend(TypingProtocol):
    """What a recipe needs from a kind of backbone. Rows index the combined items."""

    labels: np.ndarray  # of every item
    precision: str
    device: torch.device

    def features(self, model: nn.Module) -> tuple[torch.Tensor, np.ndarray]:
        """Frozen features of every item (fp32), and the rows they belong to (items that decode)."""

    def augmented(self, model: nn.Module, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray] | None:
        """Extra feature rows from augmented views of ``rows`` and the row each came from (None: none)."""

    def train(self, model: nn.Module, train_rows: np.ndarray, eval_rows: np.ndarray | None, *, epochs: int,
              phase: str, head_trained: bool, deadline: float | None) -> list[EpochRecord]:
        """Phase 2 on the items of ``train_rows``, early-stopped on ``eval_rows`` (None: keep the last epoch)."""

    def logits(self, model: nn.Module, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits of ``model`` on ``rows`` (fp32) and the rows that decoded."""

    def failed(self) -> list[tuple[str, str]]:
        """Items that could not be read, with the reason."""


@dataclass
class RecipeResult:
    model: nn.Module  # the final model (trained in place, or a refitted copy)
    history: list[EpochRecord]
    val_logits: np.ndarray  # the reported rows' logits, from models that never trained on them
    val_labels: np.ndarray
    val_rows: np.ndarray  # item indices of the reported rows
    protocol: Protocol
    recipe: str  # the recipe whose model was kept
    tried: list[dict] = field(default_factory=list)
    head: dict = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = "fp32"
    unknown: dict | None = None  # the unknown score chosen and calibrated (fit_unknown)

    def history_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.history]


# The sign test's bar: a lead counts when it is over this many standard deviations of the
# difference two equally good models would show (2: about the usual 5% two-sided level).
SIGN_TEST_Z = 2.0
# The smallest lead over the probe that the contrastive recipe showed on a test set in its
# regime (64 rows per class of SST-2 and the seven emotions, six draws: 2.5 to 11.7 points,
# docs/recipes.md); the prototypes led the solved head by 2 to 7 points with 1 to 5 photos
# per class. Held-out rows that could show a lead this size judge them alone (keeps).
EXPECTED_LEAD = 0.025


def against_probe(entry: dict) -> str:
    """``"better"``, ``"worse"`` or ``"even"``: a recipe scored on the same held-out rows as
    the probe. Of the rows where exactly one of them is right, one must win by more than
    :data:`SIGN_TEST_Z` standard deviations of that difference were both equally good (a sign
    test). On a few dozen held-out rows a lead of a few rows is noise (SST-2, 32 per class:
    ``full`` won 5 rows to 2 of 13 held out, then scored 49.7% on test against the probe's
    67.7%); on thousands, a small lead is not."""
    wins, losses = entry.get("wins", 0), entry.get("losses", 0)
    margin = SIGN_TEST_Z * math.sqrt(wins + losses)
    return "better" if wins - losses > margin else "worse" if losses - wins > margin else "even"


def rows_could_decide(n: int, lead: float = EXPECTED_LEAD) -> bool:
    """Whether ``n`` held-out rows could show a lead of ``lead`` (a fraction of them) at all:
    ``lead * n`` rows net clear the sign test's bar (:func:`against_probe`) only if they are over
    ``SIGN_TEST_Z * sqrt(lead * n)``, the bar when those are the only rows where the two differ;
    so ``SIGN_TEST_Z**2 / lead`` held-out rows (160) or fewer never can, and there they never
    judge a recipe alone (:func:`keeps`)."""
    return lead * n > SIGN_TEST_Z ** 2


def lead_bar(n: int, lead: float = EXPECTED_LEAD) -> float:
    """The rows net (right where the probe is wrong, less the other way) that a recipe of
    :data:`GIVEN_THE_DOUBT` must be over on ``n`` held-out rows that decide alone
    (:func:`keeps`): half its typical lead, where that count is nearer the lead than none."""
    return lead * n / 2


# The recipes kept unless the probe is clearly better, while the held-out rows could not show their lead.
GIVEN_THE_DOUBT = ("contrastive", "prototype")


def rows_decide(recipe: str, entry: dict) -> bool:
    """Whether the held-out rows alone judge ``recipe`` (:func:`keeps`): one of
    :data:`GIVEN_THE_DOUBT`, compared with the probe on more rows than could never show its
    lead (:func:`rows_could_decide`)."""
    return recipe in GIVEN_THE_DOUBT and "wins" in entry and rows_could_decide(entry.get("n", 0))


def keeps(recipe: str, entry: dict) -> bool:
    """auto's rule: a clear held-out difference decides; when there is none, the recipe
    measured to be better in its regime. Fine-tuning (``fine-tune``, ``full``) must beat the
    probe: it costs more and on small folds its lead is often noise. ``contrastive`` runs only
    with up to :data:`AUTO_CONTRASTIVE_MAX_PER_CLASS` rows per class, where a few dozen held-out
    rows cannot resolve its typical gain (a few points; on SST-2 with 128 per class its 86
    held-out rows put it below the probe on two of three draws that it then led by 4.8 and 4.6
    points on 1,821 test rows) but held-out test sets show it (docs/benchmarks.md): it is kept
    unless the probe is clearly better. The prototypes too.

    Unless there are more held-out rows than could never show that gain
    (:func:`rows_could_decide`: over 160, e.g. 77 intents of 8 rows scored out-of-fold): then
    they judge alone, as the choice between two hypotheses, the recipe's typical lead of
    :data:`EXPECTED_LEAD` over the probe or none. It is kept when the rows it alone got right
    outnumber the probe's by more than half that lead (the count nearer the lead than no lead),
    or when it is clearly better. Measured on 77 CLINC150 intents with 8 rows each:
    contrastive right on 17 of 411 held-out rows where the probe was wrong and the probe on
    15 the other way (a lead of 2 rows, where 2.5% would be 10.3) was kept by the doubt and
    then scored 91.3% on the test rows against the probe's 93.9%; on 616 rows, 17 vs 28, and
    90.2% against 94.0% (docs/benchmarks.md)."""
    verdict = against_probe(entry)
    if rows_decide(recipe, entry):
        return verdict == "better" or entry["wins"] - entry["losses"] > lead_bar(entry["n"])
    return verdict != "worse" if recipe in GIVEN_THE_DOUBT else verdict == "better"


def time_budget(cfg: TrainConfig, device: torch.device) -> float | None:
    """Seconds for the whole fit (None: no limit): ``cfg.time_budget``, 0 meaning none;
    by default 10 minutes on a CPU and no limit on a GPU."""
    if cfg.time_budget is not None:
        return None if cfg.time_budget == 0 else float(cfg.time_budget)
    return None if device.type == "cuda" else CPU_TIME_BUDGET


def _set_linear(head: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy a solved linear map into the head's last layer."""
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.copy_(torch.as_tensor(weight, dtype=last.weight.dtype))
        last.bias.copy_(torch.as_tensor(bias, dtype=last.bias.dtype))


def _is_linear(head: nn.Module) -> bool:
    return sum(isinstance(m, nn.Linear) for m in head.modules()) == 1


# The head's L2 strength with one training row per class (nothing to cross-validate it on):
# with 1 photo per class C = 0.01, 0.1 and 1 score within half a point (bench/prototypes.py).
SINGLE_ROW_C = 0.1

# Nearest-class-mean logits are cosine similarities times this (then calibrated by the
# temperature fitted on held-out logits, as every head's are).
PROTOTYPE_SCALE = 10.0


def prototype_head(x: torch.Tensor, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A linear head that ranks classes by the cosine similarity of an input's features to
    each class's mean direction (the mean of its rows' L2-normalised features): weight rows
    are those unit means times ``PROTOTYPE_SCALE / median feature norm``, bias 0. Ranking by
    ``x . m_c`` is ranking by ``cos(x, m_c)``, so a plain ``nn.Linear`` serves it."""
    x = x.double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.maximum(norms, 1e-12)
    means = np.zeros((k, x.shape[1]))
    for c in range(k):
        if (y == c).any():
            m = unit[y == c].mean(0)
            means[c] = m / max(np.linalg.norm(m), 1e-12)
    scale = PROTOTYPE_SCALE / max(float(np.median(norms)), 1e-12)
    return (means * scale).astype(np.float32), np.where(np.bincount(y, minlength=k) > 0, 0.0, -1e4).astype(np.float32)


def _broadcast_fit(fit: LinearFit | None) -> LinearFit:
    """Every process solves the same problem; rank 0's answer is the one all keep."""
    return distributed.broadcast(fit) if distributed.world().enabled else fit


class Transfer:
    """One fit: a backend, a resolved config, and the items' split into data and validation."""

    def __init__(self, model: nn.Module, backend: Backend, cfg: TrainConfig, *, n_data: int, n_val: int,
                 classes: list[str], loss_fn: nn.Module):
        self.model, self.backend, self.cfg = model, backend, cfg
        self.labels = backend.labels
        self.objective = objective_for(self.labels)
        self.classes, self.k = classes, len(classes)
        if self.objective.multi_label and cfg.recipe in ("contrastive", "prototype"):
            raise DataError(f"the {cfg.recipe} recipe learns one class per row, and this data has several labels per row; "
                            "use --recipe auto, linear-probe, fine-tune or full (or --single-label if the separator "
                            "is part of the label names)")
        self.loss_fn = loss_fn
        self.start = time.perf_counter()
        budget = time_budget(cfg, backend.device)
        self.deadline = None if budget is None else self.start + budget
        self.data_rows = np.arange(n_data)
        self.tried: list[dict] = []
        self.history: list[EpochRecord] = []
        # the class names as training rows of a solved head (probe_features), their chosen weight
        self.names: tuple[torch.Tensor, np.ndarray] | None = None
        self.name_weight: float | None = None
        self.name_weights_tried: list[float] = []
        self.given_val = n_val > 0
        # The protocol: a given validation set, a holdout split of the data, or k-fold CV on all of it.
        plan = plan_validation(self.labels, classes, n_data=n_data, n_val=n_val, val_split=cfg.val_split,
                               folds=cfg.folds, seed=cfg.seed, val_source=getattr(backend, "val_source", ""))
        self.protocol, self.train_rows, self.eval_rows = plan.protocol, plan.train_rows, plan.eval_rows
        if plan.folds is not None:
            self.folds = plan.folds
        self.refit = cfg.refit if cfg.refit is not None else not self.given_val

    # ------------------------------------------------------------------ helpers

    def _final_rows(self) -> np.ndarray:
        """What a final model without epochs to choose trains on: every labelled row under CV,
        the data (and a given validation set) when refitting, else the training part."""
        if self.eval_rows is None:
            return self.train_rows
        if not self.refit:
            return self.train_rows
        return self.refit_rows()

    def _held_out_splits(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(training rows, held-out rows) pairs a recipe is scored on: each fold under CV,
        else the one holdout or given validation set."""
        if self.eval_rows is not None:
            return [(self.train_rows, self.eval_rows)]
        return [(self.train_rows[tr], self.train_rows[va]) for tr, va in self.folds]

    def _smallest_class(self) -> int:
        """Training rows of the smallest class (with several labels per row, the rarest label)
        among those that have any."""
        counts = self.objective.counts(self.labels[self.train_rows], self.k)
        return int(counts[counts > 0].min())

    def time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter()

    def _score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """The objective's held-out score (accuracy; subset accuracy for several labels)."""
        return self.objective.score(logits, y)

    def _weights(self, y: np.ndarray) -> dict:
        """The solver's weights under ``--class-weight balanced`` (from the training data's
        label counts): per-row weights for one label per row, per-label positive weights
        for several; else none."""
        if self.cfg.class_weight != "balanced":
            return {}
        train = self.labels[self.data_rows]
        if self.objective.multi_label:
            return {"pos_weight": self.objective.pos_weight(train)}
        return {"sample_weight": self.objective.class_weights(train, self.k)[y]}

    # ------------------------------------------------------------------ the probe

    def probe_features(self) -> None:
        """The frozen features of every item, once (and augmented views of the training data)."""
        feats, rows = self.backend.features(self.model)
        self.feats = {int(r): i for i, r in enumerate(rows)}  # item -> feature row
        self.x = feats
        self.aug = self.backend.augmented(self.model, self.train_rows) if self.cfg.cache_views > 1 else None
        self.names = self._names(self.model)

    def _names(self, model: nn.Module) -> tuple[torch.Tensor, np.ndarray] | None:
        """The class names embedded by ``model`` as training rows of a solved linear head, with
        their classes (None: the backend has none, several labels per row, or hidden layers)."""
        embed = getattr(self.backend, "name_features", None)
        if embed is None or self.objective.multi_label or not _is_linear(self.model.head):
            return None
        return embed(model)

    def _solver_weights(self, y: np.ndarray, names, weight: float | None) -> dict:
        """The solver's weights for training classes ``y`` (:meth:`_weights`) and the class
        ``names`` as extra rows at ``weight`` (none at 0 or None)."""
        return {**self._weights(y), **({"extra": names, "extra_weight": weight} if names is not None and weight else {})}

    def _x(self, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Features of the given items that decoded, and those items."""
        ok = np.asarray([r for r in rows if int(r) in self.feats], dtype=np.int64)
        return self.x[torch.as_tensor([self.feats[int(r)] for r in ok], dtype=torch.long)], ok

    def _with_views(self, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Training features of ``rows`` plus the augmented views of those same rows only."""
        x, ok = self._x(rows)
        if self.aug is None:
            return x, self.labels[ok]
        xa, src = self.aug
        keep = np.isin(src, ok)
        return torch.cat([x, xa[torch.as_tensor(np.flatnonzero(keep))]]), np.concatenate([self.labels[ok], self.labels[src[keep]]])

    def solve(self, rows: np.ndarray, folds: list | None, name_weights=NAME_WEIGHTS) -> tuple[LinearFit, np.ndarray]:
        """Logistic regression on ``rows`` (C by k-fold CV over them, or over ``folds``, with the
        class names' weight among ``name_weights``), refitted on all of them; returns the fit
        and the rows used."""
        x, ok = self._x(rows)
        y = self.labels[ok]
        if folds is None and self.objective.counts(y, self.k).max() < 2:  # one row per class: nothing to cross-validate C on
            from .solver import fit_logistic

            # nor the names' weight: a name counts as one more example
            weight = 1.0 if self.names is not None else None
            log.info("head: one training row per class, so C cannot be cross-validated: C = %g%s", SINGLE_ROW_C,
                     "" if weight is None else ", each class's name one more row at weight 1")
            fit = LinearFit(fit_logistic(x, y, self.k, C=SINGLE_ROW_C, **self._solver_weights(y, self.names, weight)),
                            None, extra_weight=weight,
                            extra_path=None if weight is None else [{"weight": weight}])
            return _broadcast_fit(fit), ok
        if folds is None:
            folds = kfold(y, fold_count(y, self.cfg.folds), self.cfg.seed)
        else:  # folds over `rows`; keep the rows that decoded
            pos = {int(r): i for i, r in enumerate(ok)}
            folds = [(np.asarray([pos[int(rows[i])] for i in tr if int(rows[i]) in pos]),
                      np.asarray([pos[int(rows[i])] for i in va if int(rows[i]) in pos])) for tr, va in folds]
        augment = None
        if self.aug is not None:
            xa, src = self.aug
            keep = np.isin(src, ok)
            pos = {int(r): i for i, r in enumerate(ok)}
            augment = (xa[torch.as_tensor(np.flatnonzero(keep))], np.asarray([pos[int(s)] for s in src[keep]]))
        fit = None
        names = {} if self.names is None else {"extra": self.names, "extra_weights": name_weights}
        if distributed.world().is_main:
            fit = select_and_fit(x, y, self.k, folds=folds, augment=augment, **self._weights(y), **names)
        return _broadcast_fit(fit), ok

    def _keep_names(self, fit: LinearFit) -> None:
        """The class names' weight in the head that ``fit`` solved (the probe's)."""
        self.name_weight = fit.extra_weight
        self.name_weights_tried = [p["weight"] for p in fit.extra_path or []]

    def _sgd_head(self, head: nn.Module, train_rows: np.ndarray, eval_rows: np.ndarray | None, epochs: int,
                  phase: str) -> list[EpochRecord]:
        x, y = self._with_views(train_rows)
        if eval_rows is None:
            xv, yv = None, None
        else:
            xv, ok = self._x(eval_rows)
            yv = torch.as_tensor(self.labels[ok])
        return train_head(head, x, torch.as_tensor(y), xv, yv, cfg=self.cfg, epochs=epochs,
                          device=self.backend.device, loss_fn=self.loss_fn, phase=phase)

    def _head_logits(self, head: nn.Module, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, ok = self._x(rows)
        head.eval()
        with torch.inference_mode():
            return head.to(self.backend.device)(x.to(self.backend.device)).float().cpu().numpy(), ok

    def fit_head(self, head: nn.Module, train_rows: np.ndarray, *, C: float | None = None) -> dict:
        """Fit ``head`` on the features of ``train_rows`` (every one of them): solved at ``C``
        when given, else with C chosen by CV; a hidden-layer head by minibatches for the
        number of epochs chosen by :meth:`probe`."""
        if _is_linear(head):
            if C is None:
                fit, _ = self.solve(train_rows, None)
                self._keep_names(fit)
            else:
                from .solver import fit_logistic

                x, y = self._with_views(train_rows)
                weights = self._solver_weights(y, self.names, self.name_weight)
                fit = _broadcast_fit(LinearFit(fit_logistic(x, y, self.k, C=C, **weights), None))
            _set_linear(head, fit.solution.weight, fit.solution.bias)
            return {"kind": "logistic regression (L-BFGS)", "C": fit.solution.C, "path": fit.path, **self._names_info()}
        epochs = getattr(self, "head_epochs_chosen", None) or self.cfg.head_epochs or self.cfg.epochs
        self.history += self._sgd_head(head, train_rows, None, epochs, "head refit")
        return {"kind": "minibatch", "epochs": epochs}

    def _names_info(self, weight: float | None = None) -> dict:
        """What the head's description says of the class names: the weight they trained at."""
        weight = self.name_weight if weight is None else weight
        if self.names is None or weight is None:
            return {}
        return {"class_names": {"weight": weight, "weights_tried": self.name_weights_tried}}

    def probe(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """Fit the probe's head on every training row. Returns the reported rows' logits
        (out-of-fold under CV, else of the held-out rows from a model that never saw them),
        those rows, and a description of the head."""
        head = self.model.head
        if _is_linear(head):
            if self.eval_rows is None:  # CV: out-of-fold logits of every row; the fit is on all of them
                fit, ok = self.solve(self.train_rows, self.folds)
                self._keep_names(fit)
                _set_linear(head, fit.solution.weight, fit.solution.bias)
                self.C = fit.solution.C
                y = self.labels[ok]
                self.protocol.fold_accuracy = [self._score(fit.oof_logits[va], y[va]) for _, va in fit.folds if len(va)]
                return fit.oof_logits.astype(np.float32), ok, {"kind": "logistic regression (L-BFGS)", "C": self.C, "path": fit.path,
                                                               **self._names_info()}
            fit, _ = self.solve(self.train_rows, None)
            self._keep_names(fit)
            _set_linear(head, fit.solution.weight, fit.solution.bias)
            self.C = fit.solution.C
            logits, ok = self._head_logits(head, self.eval_rows)
            info = {"kind": "logistic regression (L-BFGS)", "C": self.C, "path": fit.path, **self._names_info()}
            if self.refit:
                self.fit_head(head, np.concatenate([self.train_rows, self.eval_rows]), C=self.C)
            return logits, ok, info
        # A head with hidden layers: minibatches, epochs chosen on held-out rows.
        self.C = None
        epochs = self.cfg.head_epochs if self.cfg.recipe in ("fine-tune", "auto") and self.cfg.head_epochs else self.cfg.epochs
        initial = copy.deepcopy(head.state_dict())
        if self.eval_rows is None:
            oof, rows, best = [], [], []
            for i, (tr, va) in enumerate(self.folds):
                head.load_state_dict(initial)
                hist = self._sgd_head(head, self.train_rows[tr], self.train_rows[va], epochs, f"head fold {i + 1}")
                best.append(max(hist, key=lambda r: (r.val_accuracy, -r.val_loss)).epoch)
                logits, ok = self._head_logits(head, self.train_rows[va])
                oof.append(logits)
                rows.append(ok)
            self.head_epochs_chosen = int(np.median(best))
            order = np.concatenate(rows)
            logits = np.concatenate(oof)
            head.load_state_dict(initial)
            self.fit_head(head, self.train_rows)
            return logits, order, {"kind": "minibatch", "epochs": self.head_epochs_chosen, "fold_best_epochs": best}
        hist = self._sgd_head(head, self.train_rows, self.eval_rows, epochs, "head")
        self.history += hist
        self.head_epochs_chosen = max(hist, key=lambda r: (r.val_accuracy, -r.val_loss)).epoch
        logits, ok = self._head_logits(head, self.eval_rows)
        if self.refit:
            head.load_state_dict(initial)
            self.fit_head(head, np.concatenate([self.train_rows, self.eval_rows]))
        return logits, ok, {"kind": "minibatch", "epochs": self.head_epochs_chosen}

    # ------------------------------------------------------------------ prototypes

    def prototype(self, probe: dict | None) -> dict:
        """Nearest class mean by cosine similarity (:func:`prototype_head`): scored out-of-fold
        under CV (each fold's means from its training part), else on the held-out rows;
        then the means of every training row go into the model's linear head."""
        start = time.perf_counter()
        parts, rows, fold_accuracy = [], [], []
        for train_rows, eval_rows in self._held_out_splits():
            xt, ok = self._x(train_rows)
            w, b = prototype_head(xt, self.labels[ok], self.k)
            xv, okv = self._x(eval_rows)
            parts.append((xv.numpy() @ w.T + b).astype(np.float32))
            rows.append(okv)
            fold_accuracy.append(self._score(parts[-1], self.labels[okv]))
        logits, rows = np.concatenate(parts), np.concatenate(rows)
        x, ok = self._x(self._final_rows())
        w, b = prototype_head(x, self.labels[ok], self.k)
        entry = {"recipe": "prototype", "accuracy": self._score(logits, self.labels[rows]), "n": int(len(rows)),
                 "seconds": round(time.perf_counter() - start, 1)}
        if probe is not None:
            entry.update(self._against_probe(logits, rows, probe))
        return {"logits": logits, "rows": rows, "entry": entry, "weight": w, "bias": b,
                "fold_accuracy": fold_accuracy if self.eval_rows is None else None}

    # ------------------------------------------------------------------ phase 2

    def _futile(self, held_out: int, folds: FoldEmbeddings, probe: dict, i: int) -> bool:
        """Whether auto stops the contrastive folds after fold ``i``, judged on the rows the
        folds so far held out, scored at their last common step: the probe is clearly better
        (:func:`against_probe`), or contrastive could not be kept even if the rows still to be
        scored showed its typical lead (:data:`EXPECTED_LEAD` of them, net): its lead so far
        plus that would not clear :func:`keeps`' bar on all ``held_out`` rows (half the typical
        lead). Asked only when all folds hold out more rows than the floor under which rows
        never judge contrastive alone (:func:`rows_could_decide`): under it the doubt
        contrastive is given (:func:`keeps`) has no reason to wait for the other folds. Either
        way the entry it returns is dropped. Measured on 77 banking intents with 8 rows each
        (docs/benchmarks.md): after two of the three folds the probe was right on 53 held-out
        rows where contrastive was wrong and contrastive on 23 the other way; without a time
        budget the third fold (155 s on 2 cores) was not tuned."""
        step = folds.steps()[-1]
        _, logits, _ = folds.out_of_fold(step)
        rows = folds.held_out(step)
        so_far = self._against_probe(logits.astype(np.float32), rows, probe)
        net, rest, bar = so_far["wins"] - so_far["losses"], held_out - len(rows), lead_bar(held_out)
        if against_probe(so_far) == "worse":
            why = f"linear-probe is clearly better on the {len(rows)} rows held out so far"
        elif net + EXPECTED_LEAD * rest <= bar:
            why = (f"even a {EXPECTED_LEAD:.1%} lead on the {rest} rows still to be scored would not take it over "
                   f"{bar:.1f} rows net, after {net:+d} on the {len(rows)} rows held out so far")
        else:
            return False
        log.info("auto: contrastive stopped after fold %d: %s, of %d in all folds (right where the other is wrong: "
                 "%d vs %d)", i + 1, why, held_out, so_far["losses"], so_far["wins"])
        return True

    def _against_probe(self, logits: np.ndarray, rows: np.ndarray, probe: dict) -> dict:
        """The probe's accuracy on the rows a recipe was scored on (by the probe trained on
        the same rows), and on how many of them each one alone is right."""
        pos = {int(r): i for i, r in enumerate(probe["rows"])}
        mine = np.asarray([i for i, r in enumerate(rows) if int(r) in pos], dtype=np.int64)
        both = rows[mine]
        y = self.labels[both]
        ours = self.objective.correct(logits[mine], y)
        theirs = self.objective.correct(probe["logits"][[pos[int(r)] for r in both]], y)
        return {"probe_accuracy": float(theirs.mean()) if len(y) else 0.0,
                "wins": int((ours & ~theirs).sum()), "losses": int((theirs & ~ours).sum())}


    def _judge(self, recipe: str, entry: dict, asked: bool) -> bool:
        """Whether the tried ``recipe`` is kept (always when the user ``asked`` for it, else by
        :func:`keeps`); logs the comparison with the probe when there was one and records
        the entry in ``tried``."""
        keep = asked or keeps(recipe, entry)
        if "wins" in entry:
            alone = (f"; enough rows to show a {EXPECTED_LEAD:.1%} lead, so they decide: kept if over "
                     f"{lead_bar(entry['n']):.1f} rows net" if not asked and rows_decide(recipe, entry) else "")
            log.info("%s%s %.4f vs linear-probe %.4f on the same %d held-out rows (right where the other is wrong: "
                     "%d vs %d%s): keeping %s", "" if asked else "auto: ", recipe, entry["accuracy"], entry["probe_accuracy"],
                     entry["n"], entry["wins"], entry["losses"], alone, recipe if keep else "linear-probe")
        entry["kept"] = keep
        self.tried.append(entry)
        return keep

    def _scored_on_folds(self, n: int, folds_used: int, fold_accuracy: list[float] | None,
                         of: int | None = None) -> None:
        """The protocol once a recipe other than the probe is kept under CV: still
        cross-validation when it was scored on every fold of its split (``of`` folds, by
        default the probe's), else a holdout of the folds it was."""
        of = of or self.protocol.folds
        if folds_used == of:
            self.protocol.folds, self.protocol.fold_accuracy, self.protocol.n = of, fold_accuracy, n
            return
        which = f"folds 1-{folds_used}" if folds_used > 1 else "fold 1"
        self.protocol = Protocol("holdout", n, folds=of, source=f"{which} of the {of}-fold split",
                                 multi_label=self.objective.multi_label)

    def phase2(self, recipe: str, pristine: nn.Module, probe_logits: dict | None) -> dict | None:
        """Phase 2 (``fine-tune`` or ``full``) on a copy of the pretrained model: early-stopped
        on the held-out rows (under CV: the first fold), refitted on every row when asked and
        affordable. Returns what it measured (None: the time budget did not allow it)."""
        cfg = self.cfg
        train_rows, eval_rows = self._held_out_splits()[0]
        start = time.perf_counter()
        head_trained = recipe == "fine-tune"
        # the budget bounds what auto tries; a recipe the user asked for trains to its end
        deadline = self.deadline if cfg.recipe == "auto" else None
        epochs, all_rows = cfg.epochs, len(train_rows)
        while True:
            model = copy.deepcopy(pristine)
            if head_trained:
                self.fit_head(model.head, train_rows, C=self.C)
            try:
                hist = self.backend.train(model, train_rows, eval_rows, epochs=epochs, phase=recipe,
                                          head_trained=head_trained, deadline=deadline)
                break
            except OverBudget as exc:
                part = self._affordable_part(train_rows, len(eval_rows), exc) if epochs == cfg.epochs else None
                if part is None:
                    log.info("%s not tried: %s", recipe, exc)
                    self.tried.append({"recipe": recipe, "skipped": str(exc)})
                    return None
                log.info("%s: %s; training one epoch on %d of the %d training rows (drawn at random), what the "
                         "time budget holds", recipe, exc, len(part), len(train_rows))
                train_rows, epochs = part, 1
        logits, ok = self.backend.logits(model, eval_rows)
        score = self._score(logits, self.labels[ok])
        best = max(hist, key=lambda r: (r.val_accuracy, -r.val_loss))
        entry = {"recipe": recipe, "accuracy": score, "n": int(len(ok)), "epochs": len(hist), "best_epoch": best.epoch,
                 "seconds": round(time.perf_counter() - start, 1)}
        if len(train_rows) < all_rows:
            entry["trained_rows"] = int(len(train_rows))
        if probe_logits is not None:  # the probe on the same rows, trained on the same rows
            entry.update(self._against_probe(logits, ok, probe_logits))
        return {"model": model, "history": hist, "logits": logits, "rows": ok, "entry": entry,
                "train_rows": train_rows, "eval_rows": eval_rows, "best_epoch": best.epoch}

    # Phase 2 on part of the training rows when a whole epoch does not fit auto's time budget:
    # at least this share of an epoch (less is little more than noise on the pretrained
    # weights), sized with this margin on the projected time.
    MIN_EPOCH_PART = 0.2
    BUDGET_MARGIN = 0.8

    def _affordable_part(self, train_rows: np.ndarray, n_eval: int, exc: OverBudget) -> np.ndarray | None:
        """The training rows one epoch of phase 2 can cover in the time left (a seeded random
        draw), leaving time to score the held-out rows; None when that is under
        ``MIN_EPOCH_PART`` of them. Large data on a CPU: one epoch over a part of it usually
        beats no fine-tuning at all, and the sign test against the probe still decides."""
        if not math.isfinite(exc.epoch_seconds) or exc.epoch_seconds <= 0:
            return None
        per_row = exc.epoch_seconds / max(1, len(train_rows))
        scoring = per_row * n_eval / 3  # inference: no backward pass
        share = distributed.broadcast(self.BUDGET_MARGIN * (self.time_left() - scoring) / exc.epoch_seconds)
        if share < self.MIN_EPOCH_PART:
            return None
        m = int(share * len(train_rows))
        return np.sort(np.random.default_rng([self.cfg.seed, 2]).choice(train_rows, m, replace=False))

    def refit_rows(self) -> np.ndarray:
        """Every labelled row: the data (under CV or a holdout split), plus a given validation set."""
        return np.concatenate([self.train_rows, self.eval_rows]) if self.given_val else self.data_rows

    def refit_phase2(self, recipe: str, pristine: nn.Module, tried: dict) -> nn.Module | None:
        """Phase 2 again on every labelled row, for the epochs that held out best; None when
        the time budget cannot hold it (estimated from the held-out run, scaled by rows)."""
        rows = self.refit_rows()
        epochs = tried["best_epoch"]
        per_epoch = [r.seconds for r in tried["history"]]
        estimate = sum(per_epoch[:epochs]) * len(rows) / max(1, len(tried["train_rows"]))
        if past_deadline(self.deadline, estimate):
            log.info("%s: not refitted on all %d rows: about %.0f s, over the %.0f s left of the time budget",
                     recipe, len(rows), estimate, max(0.0, self.time_left()))
            return None
        model = copy.deepcopy(pristine)
        head_trained = recipe == "fine-tune"
        if head_trained:
            self.fit_head(model.head, rows, C=self.C)
        log.info("%s: refitting on all %d labelled rows for %d epoch(s)", recipe, len(rows), epochs)
        self.history += self.backend.train(model, rows, None, epochs=epochs, phase=f"{recipe} refit",
                                           head_trained=head_trained, deadline=None)
        return model

    def _refit_holds(self, recipe: str, refitted: nn.Module, tried: dict) -> bool:
        """Whether the model refitted on every row fits the held-out rows it now trained on
        at least as well as the judged model did without them. It should, by construction; a
        refit that does worse has diverged or collapsed (a few optimizer steps on a few dozen
        rows can end on one class), and the judged model, which scored the reported rows, is
        kept instead."""
        logits, ok = self.backend.logits(refitted, tried["eval_rows"])
        fits = self._score(logits, self.labels[ok])
        if fits >= tried["entry"]["accuracy"]:
            return True
        log.warning("%s: the model refitted on every row scores %.4f on the %d held-out rows it trained on, below the "
                    "%.4f of the model that never saw them: the refit is discarded and that model kept", recipe, fits,
                    len(ok), tried["entry"]["accuracy"])
        tried["entry"]["refit_discarded"] = round(fits, 4)
        return False

    # ------------------------------------------------------------------ contrastive

    def _contrastive_splits(self, probe: dict | None) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict | None, int | None]:
        """The held-out splits the contrastive recipe is scored on, the probe's logits on them,
        and under CV the number of folds. Each fold tunes the encoder once, so under CV it uses
        at most :data:`CONTRASTIVE_FOLDS` (stratified, every row scored once out-of-fold when all run),
        and the linear probe is solved again on the same folds so that both are judged on rows
        their models never saw, trained on the same rows. Once the smallest class has
        :data:`AUTO_MIN_PER_CLASS` rows, only the first split is used."""
        if self.eval_rows is not None or self.protocol.folds is None or self.protocol.folds <= CONTRASTIVE_FOLDS \
                or self.C is None:
            splits, n_folds = self._held_out_splits(), self.protocol.folds if self.eval_rows is None else None
        else:
            y = self.labels[self.train_rows]
            folds = kfold(y, fold_count(y, CONTRASTIVE_FOLDS), self.cfg.seed)  # cfg.folds is larger here
            # the probe as chosen (its names' weight too), solved again on these folds
            fit, ok = self.solve(self.train_rows, folds, name_weights=[self.name_weight or 0.0])
            splits, n_folds = [(self.train_rows[tr], self.train_rows[va]) for tr, va in folds], len(folds)
            probe = {"logits": fit.oof_logits.astype(np.float32), "rows": ok}
        if self._smallest_class() >= AUTO_MIN_PER_CLASS:  # judged on the first fold (CONTRASTIVE_FOLDS)
            splits = splits[:1]
        return splits, probe, n_folds

    def contrastive(self, pristine: nn.Module, probe: dict | None) -> dict | None:
        """The encoder tuned contrastively (:mod:`headstart.training.contrastive`), a head solved on its
        embeddings. Scored on held-out rows: under CV on as many of :meth:`_contrastive_splits`'
        folds as the time budget allows (the first always; only the first once the smallest class
        has :data:`AUTO_MIN_PER_CLASS` rows; under ``auto``, none after a fold that leaves it no
        chance to be kept: :meth:`_futile`), each fold's encoder trained on the
        fold's training part only, for the planned steps (or the most that every fold reached
        within the time budget). The held-out accuracy at 25, 50, 75 and 100% of the steps is
        recorded as ``curve``. Returns what it measured, with the held-out logits (None: over
        budget)."""
        cfg = self.cfg
        start = time.perf_counter()
        splits, probe, n_folds = self._contrastive_splits(probe)
        steps = step_budget(self.labels[splits[0][0]], cfg.batch_size)
        checkpoints = sorted({max(1, round(steps * f)) for f in (0.25, 0.5, 0.75, 1.0)})
        deadline = self.deadline if cfg.recipe == "auto" else None
        folds = FoldEmbeddings(self.labels, self.k, lambda y: self._weights(y).get("sample_weight"),
                               None if self.names is None else self.names[1], self.name_weight)
        fold_seconds: list[float] = []
        step_seconds: list[float] = []
        first_model = None

        # auto stops the folds once they leave contrastive no chance to be kept (_futile), where
        # every fold's rows together would judge it alone (rows_could_decide)
        held_out = sum(len(va) for _, va in splits)
        may_stop = cfg.recipe == "auto" and probe is not None and rows_could_decide(held_out)
        stopped = None
        for i, (tr, va) in enumerate(splits):
            if i and deadline is not None:  # room for this fold and the refit on every row
                if past_deadline(deadline, 2.2 * np.mean(fold_seconds)):
                    break
            model = copy.deepcopy(pristine)
            name = f"contrastive fold {i + 1} of {len(splits)}" if len(splits) > 1 else "contrastive"

            def checkpoint(step: int, model=model, tr=tr, va=va, name=name) -> tuple[torch.Tensor, ...]:
                (xt, ok), (xv, okv) = self.backend.embed(model, tr), self.backend.embed(model, va)
                log.info("%s: step %d of %d", name, step, steps)
                names = () if not (self.names is not None and self.name_weight) else (self._names(model)[0],)  # by this fold's encoder
                return (xt, torch.as_tensor(ok), xv, torch.as_tensor(okv), *names)  # tensors: kept in the run's checkpoint

            # only the first fold's weights can be needed again (refit_contrastive)
            tuned = self.backend.contrast(model, tr, steps, checkpoints=set(checkpoints), on_checkpoint=checkpoint,
                                          deadline=deadline, phase=name, keep_weights=i == 0)
            step_seconds += tuned.seconds
            if not tuned.at:
                break
            if i == 0:
                first_model = model
            folds.add(tuned.at)
            fold_seconds.append(tuned.wall)
            if may_stop and i + 1 < len(splits) and self._futile(held_out, folds, probe, i):
                stopped = i + 1
                break
        if not folds:
            self.tried.append({"recipe": "contrastive", "skipped": "the time budget did not allow one checkpoint"})
            return None
        common = folds.steps()
        # The planned steps, not the checkpoint a few dozen held-out rows favour: measured on
        # 8 rows per class, picking among the checkpoints by held-out accuracy chose fewer steps
        # and scored lower on test data more often than not (docs/recipes.md).
        best = max(common)
        rows = folds.held_out(best)
        y = self.labels[rows]
        C, logits, path = folds.out_of_fold(best)
        name_weight = self.name_weight  # None without names
        logits = logits.astype(np.float32)
        curve = {int(step): round(self._score(folds.out_of_fold(step, C)[1] if step != best else logits, y), 4) for step in common}
        log.info("contrastive: held-out accuracy %s at steps %s (head C = %.3g%s, chosen out-of-fold)",
                 ", ".join(f"{a:.4f}" for a in curve.values()), ", ".join(map(str, curve)), C,
                 "" if name_weight is None else f", class names at weight {name_weight:g}")
        entry = {"recipe": "contrastive", "accuracy": self._score(logits, y), "n": int(len(rows)),
                 "folds": len(folds), "steps": best, "steps_planned": steps, "curve": curve, "C": C,
                 **({} if name_weight is None else {"class_name_weight": name_weight}),
                 "seconds": round(time.perf_counter() - start, 1)}
        if n_folds is not None:
            entry["of_folds"] = n_folds
        if stopped is not None:
            entry["stopped_after_fold"] = stopped
        if probe is not None:
            entry.update(self._against_probe(logits, rows, probe))
        bounds = folds.bounds(best)
        fold_accuracy = [self._score(logits[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return {"logits": logits, "rows": rows, "entry": entry, "steps": best, "fold_accuracy": fold_accuracy, "C": C,
                "name_weight": name_weight,
                "path": path, "fold_rows": splits[0][0], "first_model": first_model,
                "step_seconds": float(np.mean(step_seconds)) if step_seconds else 0.0}

    def refit_contrastive(self, pristine: nn.Module, tried: dict) -> nn.Module:
        """The encoder tuned on every labelled row, for the steps that held out best scaled
        from a fold's rows to all of them (each row takes part in as many batches,
        :func:`~headstart.training.contrastive.refit_steps`), its head solved at the C chosen
        out-of-fold (:meth:`contrastive`): the rows the final encoder was tuned on are
        separable by construction, so a cross-validation over them cannot choose C. When the
        final rows are the first split's training rows (a validation set, no refit), that
        split's encoder is the final one. When ``auto``'s time budget cannot hold the tuning,
        the first fold's encoder is kept and only its head is solved on every row."""
        from .solver import fit_logistic

        rows = self._final_rows()
        steps = refit_steps(tried["steps"], self.labels[tried["fold_rows"]], self.labels[rows], self.cfg.batch_size)
        estimate = steps * tried["step_seconds"]
        if tried["first_model"] is not None and np.array_equal(rows, tried["fold_rows"]):  # refit_steps: the same steps
            log.info("contrastive: the encoder tuned on the %d training rows is the final one", len(rows))
            model = tried["first_model"]
            self.refit_done = False
        elif self.cfg.recipe == "auto" and tried["first_model"] is not None and past_deadline(self.deadline, estimate):
            log.info("contrastive: not tuned again on all %d rows (about %.0f s, over the %.0f s left of the time budget): "
                     "the first fold's encoder is kept, its head solved on every row", len(rows), estimate,
                     max(0.0, self.time_left()))
            model = tried["first_model"]
            self.refit_done = False
        else:
            model = copy.deepcopy(pristine)
            log.info("contrastive: tuning on all %d labelled rows for %d steps", len(rows), steps)
            self.backend.contrast(model, rows, steps, checkpoints=set(), on_checkpoint=None, deadline=None,
                                  phase="contrastive refit")
            self.refit_done = len(rows) > len(self.train_rows) or self.eval_rows is None
        x, ok = self.backend.embed(model, rows)
        names = self._names(model)  # by the final encoder
        y = self.labels[ok]
        weights = self._solver_weights(y, names, tried["name_weight"])
        solution = fit_logistic(x, y, self.k, C=tried["C"], **weights) if distributed.world().is_main else None
        solution = distributed.broadcast(solution)
        _set_linear(model.head, solution.weight, solution.bias)
        self.contrastive_head = {"kind": "logistic regression (L-BFGS) on the tuned encoder's embeddings, C chosen "
                                 "on the folds' held-out rows", "C": solution.C, "path": tried["path"],
                                 **self._names_info(tried["name_weight"])}
        return model

    # ------------------------------------------------------------------ unknown inputs

    def fit_unknown(self, recipe: str, report: dict) -> dict | None:
        """The unknown score of the kept model (:mod:`headstart.models.unknown`) and its scores on
        the reported in-scope rows, which the threshold is set on; None when the model never
        answers unknown (``unknown_rate`` 0, several labels per row, or a class named so).

        The score is :func:`headstart.models.unknown.choose`'s. ``knn`` is possible when the kept
        model's backbone is the frozen one (every row is compared with the other rows' cached
        features) or was tuned by phase 2 and is the model that scored the held-out rows (no
        refit): it compares them with its own training rows' features, which it keeps. A
        model refitted on every row has no held-out rows its features were not trained on,
        so logit scores only."""
        from ..models import unknown as U
        from ..objectives import UNKNOWN

        cfg = self.cfg
        if not cfg.unknown_rate or self.objective.multi_label:
            return None
        if UNKNOWN in self.classes:
            log.info("unknown: a class is named %r, so the model answers it as a class and never abstains", UNKNOWN)
            return None
        start = time.perf_counter()
        frozen = recipe in ("linear-probe", "prototype") and hasattr(self, "x")
        scoring = getattr(self, "scoring", None) if recipe in ("fine-tune", "full") else None
        score, why = U.choose(cfg.unknown_score, knn_available=frozen or scoring is not None, recipe=recipe)
        rows = report["rows"]
        named = {p: U.logit_scores(p, torch.as_tensor(np.asarray(report["logits"]))).double().numpy()
                 for p in U.parts(score) if p != "knn"}
        k_nn, bank = 0, None
        if "knn" in U.parts(score):
            named["knn"], bank, k_nn = self._knn_calibration(rows, scoring)
        scores, mix = (named[score], None) if len(U.parts(score)) == 1 else U.standardise(named, score)
        threshold = U.threshold_for(scores[np.isfinite(scores)], cfg.unknown_rate)
        log.info("unknown: %s score (%s), threshold %.4g: %.1f%% of the %d in-scope held-out rows over it; %.1fs",
                 score, why, threshold, 100 * float(np.mean(scores > threshold)), len(scores), time.perf_counter() - start)
        return {"score": score, "why": why, "k": k_nn, "bank": bank, "mix": mix, "scores": scores,
                "rate": cfg.unknown_rate, "threshold": threshold}

    def _knn_calibration(self, rows: np.ndarray, scoring: dict | None) -> tuple[np.ndarray, torch.Tensor, int]:
        """The knn scores of the reported ``rows``, the training features the model keeps
        (unit rows, fp16) and k. Frozen backbone: every row against the cached features of
        the final model's training rows, never itself. Tuned (``scoring``): the model that
        scored the rows, against its own training rows' features."""
        from ..models import unknown as U

        seed = self.cfg.seed
        if scoring is None:
            bank_rows, cap = self._final_rows(), U.KNN_MAX_BANK
        else:
            bank_rows, cap = scoring["train_rows"], U.KNN_MAX_TUNED_BANK
        if len(bank_rows) > cap:
            bank_rows = np.sort(np.random.default_rng([seed, 3]).choice(bank_rows, cap, replace=False))
        xb, bank_rows = self._x(bank_rows) if scoring is None else self._features_of(scoring["model"], bank_rows)
        bank = torch.nn.functional.normalize(xb.float(), dim=1).half()
        k_nn = U.knn_k(self.objective.counts(self.labels[bank_rows], self.k))
        xq, okq = self._x(rows) if scoring is None else self._features_of(scoring["model"], rows)
        where = {int(r): i for i, r in enumerate(bank_rows)}
        exclude = np.asarray([where.get(int(r), -1) for r in okq])  # a row is not its own neighbour
        scores = np.full(len(rows), np.nan)
        pos = {int(r): i for i, r in enumerate(rows)}
        scores[[pos[int(r)] for r in okq]] = U.knn_scores(xq, bank, k_nn, exclude).double().numpy()
        return scores, bank, k_nn

    def _features_of(self, model: nn.Module, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """What ``model``'s head reads for ``rows`` (never cached: the backbone may be tuned)."""
        from ..models.unknown import FeaturesOf

        feats, ok = self.backend.logits(FeaturesOf(model), rows)
        return torch.as_tensor(np.asarray(feats), dtype=torch.float32), ok

    # ------------------------------------------------------------------ the recipes

    def run(self) -> RecipeResult:
        cfg = self.cfg
        recipe = cfg.recipe
        phase2_recipe = {"auto": getattr(self.backend, "phase2_recipe", "fine-tune"), "fine-tune": "fine-tune", "full": "full",
                         "contrastive": "contrastive"}.get(recipe)
        needs_probe = recipe in ("auto", "linear-probe", "fine-tune", "contrastive")
        pristine = copy.deepcopy(self.model) if phase2_recipe else None
        self.C = None
        probe = None
        head_info: dict = {}
        if needs_probe:
            self.probe_features()
            logits, rows, head_info = self.probe()
            probe = {"logits": logits, "rows": rows}
            if recipe in ("auto", "linear-probe"):
                self.tried.append({"recipe": "linear-probe", "accuracy": self._score(logits, self.labels[rows]),
                                   "n": int(len(rows)), "seconds": round(time.perf_counter() - self.start, 1),
                                   "protocol": self.protocol.kind,
                                   **({} if self.name_weight is None else {"class_name_weight": self.name_weight})})
        final_model, final_recipe = self.model, "linear-probe"
        report = probe
        smallest = self._smallest_class()
        single = not self.objective.multi_label
        few_for_prototypes = (recipe == "auto" and single and getattr(self.backend, "prototypes", False)
                              and smallest < AUTO_MIN_PER_CLASS)
        if (recipe == "prototype" or few_for_prototypes) and _is_linear(self.model.head):
            if recipe == "prototype":
                self.probe_features()
            tried = self.prototype(probe)
            if self._judge("prototype", tried["entry"], asked=recipe == "prototype"):
                _set_linear(self.model.head, tried["weight"], tried["bias"])
                final_recipe = "prototype"
                report = {"logits": tried["logits"], "rows": tried["rows"]}
                head_info = {"kind": "nearest class mean (cosine similarity)", "scale": PROTOTYPE_SCALE}
                if tried["fold_accuracy"] is not None:
                    self.protocol.fold_accuracy = tried["fold_accuracy"]
        if phase2_recipe and recipe == "auto":
            if smallest <= AUTO_CONTRASTIVE_MAX_PER_CLASS and single and getattr(self.backend, "can_contrast", False):
                log.info("auto: the smallest class has %d training rows: trying contrastive", smallest)
                phase2_recipe = "contrastive"
            elif smallest < AUTO_MIN_PER_CLASS:
                what = "rarest label" if self.objective.multi_label else "smallest class"
                reason = f"the {what} has {smallest} training rows (fewer than {AUTO_MIN_PER_CLASS})"
                log.info("auto: %s not tried: %s", phase2_recipe, reason)
                self.tried.append({"recipe": phase2_recipe, "skipped": reason})
                phase2_recipe = None
            elif past_deadline(self.deadline):
                reason = "the time budget was spent on the probe"
                self.tried.append({"recipe": phase2_recipe, "skipped": reason})
                phase2_recipe = None
        if phase2_recipe == "contrastive":  # images and word vectors refuse it before any work (config, text.py)
            tried = self.contrastive(pristine, probe)
            phase2_recipe = None  # done here
            if tried is not None and self._judge("contrastive", tried["entry"], asked=recipe != "auto"):
                final_model, final_recipe = self.refit_contrastive(pristine, tried), "contrastive"
                head_info = self.contrastive_head
                report = {"logits": tried["logits"], "rows": tried["rows"]}
                if self.eval_rows is None:
                    self._scored_on_folds(len(tried["rows"]), tried["entry"]["folds"], tried["fold_accuracy"],
                                          of=tried["entry"].get("of_folds"))
        if phase2_recipe:
            tried = self.phase2(phase2_recipe, pristine, probe if recipe == "auto" else None)
            if tried is not None:
                keep = self._judge(phase2_recipe, tried["entry"], asked=recipe != "auto")
                self.history += tried["history"]  # shown in the report either way, its outcome in `tried`
                if keep:
                    final_model, final_recipe = tried["model"], phase2_recipe
                    report = {"logits": tried["logits"], "rows": tried["rows"]}
                    if self.eval_rows is None:  # CV: phase 2 is judged on its held-out fold
                        self._scored_on_folds(len(tried["rows"]), 1, None)
                    refitted = self.refit_phase2(phase2_recipe, pristine, tried) if self.refit else None
                    if refitted is not None and not self._refit_holds(phase2_recipe, refitted, tried):
                        refitted = None
                    if refitted is None:  # the kept model scored the reported rows: knn can be calibrated on them
                        self.scoring = {"model": tried["model"], "train_rows": tried["train_rows"]}
                    else:
                        final_model = refitted
                    self.refit_done = refitted is not None
        if self.tried and self.tried[0]["recipe"] == "linear-probe":  # the probe's entry comes first
            self.tried[0]["kept"] = final_recipe == "linear-probe"
        if final_recipe in ("linear-probe", "prototype"):
            self.protocol.refit = self.refit or self.protocol.kind == "cross-validation"
        else:
            self.protocol.refit = bool(getattr(self, "refit_done", False))
        for p in final_model.parameters():
            p.requires_grad_(True)
        final_model.eval()
        unknown = self.fit_unknown(final_recipe, report)
        rows = report["rows"]
        return RecipeResult(
            model=final_model, history=self.history, val_logits=np.asarray(report["logits"], dtype=np.float32),
            val_labels=self.labels[rows], val_rows=rows, protocol=self.protocol, recipe=final_recipe,
            tried=self.tried, head=head_info, failed=self.backend.failed(),
            seconds=time.perf_counter() - self.start, precision=self.backend.precision, unknown=unknown,
        )
