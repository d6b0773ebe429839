"""What image and text classifiers share: the scikit-learn style front, the summary of a
fit, saving and loading (:mod:`headstart.classifiers.loading` loads any model directory by its task)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from .artifact import read_config, save_model_dir
from ..evaluation.calibration import check_temperature
from ..config import TASK_DEFAULTS, HeadConfig, TrainConfig
from ..data.labels import LabelPredictions
from ..errors import DataError, HeadstartError, ModelDirError
from ..evaluation.metrics import summary_line
from ..objectives import SINGLE_LABEL, Abstain, decision_from_config, objective_from_config

log = logging.getLogger("headstart")


@dataclasses.dataclass
class Evaluation:
    """A model on labelled data (:meth:`Classifier.evaluation`): the items that could be
    read, their labels, the logits (before the temperature), the probabilities, the unknown
    scores of the items and of the unknown inputs (None without them), and the metrics."""

    items: list[str]
    labels: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    scores: np.ndarray | None
    unknown_scores: np.ndarray | None
    metrics: dict[str, Any]


class Classifier(LabelPredictions):
    """Base of :class:`ImageClassifier` and :class:`TextClassifier`.

    Subclasses implement ``fit``, ``predict_proba``, ``evaluate``, ``_state`` (tensors to
    save), ``_config`` (task-specific config entries), ``_from_config`` and optionally
    ``_write_files`` (extra files such as a tokenizer).
    """

    task = ""
    # softmax(logits / temperature_) (sigmoids with several labels per row): fitted on the
    # validation set by ``fit``, 1.0 = none
    temperature_ = 1.0
    # what the outputs mean (:mod:`headstart.objectives`): set by ``fit`` from the data, or loaded
    objective_ = SINGLE_LABEL

    def __init__(self, *, hidden: Sequence[int] = (), dropout: float | None = None, pooling: str, progress: bool = False,
                 **train: Any):
        dropout = TASK_DEFAULTS[self.task]["dropout"] if dropout is None else dropout
        self.head_config = HeadConfig(pooling=pooling, hidden=tuple(hidden), dropout=dropout)
        self.config = TrainConfig(task=self.task, head=self.head_config, **train)
        self.progress = progress

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise HeadstartError(
                f"this {type(self).__name__} is not trained yet; call fit() or {type(self).__name__}.load()"
            )

    def predict_proba(self, inputs: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _probabilities(self, logits) -> np.ndarray:
        """Probabilities from logits (a tensor or an array): softmax(logits / T), or a
        sigmoid per label with several labels per row."""
        logits = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
        if logits.size == 0:
            return np.zeros(logits.shape, dtype=np.float64)
        return self.objective_.probabilities(logits, self.temperature_)

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """The objective's metrics of probabilities against labels, decided by the model's rule."""
        return self.objective_.metrics(labels, probs, self.classes_, self.decision_)

    def evaluate(self, data: Any, labels: Sequence[Any] | None = None, *, unknown: Any = None) -> dict[str, Any]:
        """Metrics on labelled data whose class names the model knows (text: a file, a
        DataFrame, or texts + ``labels``). With ``unknown`` (inputs of none of the classes),
        also ``"unknown"``: how well the model tells them from the labelled data
        (:meth:`unknown_metrics`)."""
        return self.evaluation(data, labels, unknown=unknown).metrics

    def evaluation(self, data: Any, labels: Sequence[Any] | None = None, *, unknown: Any = None) -> "Evaluation":
        """What :meth:`evaluate` measures, with what it measured it on: the items, labels,
        logits, probabilities and unknown scores (for reports)."""
        if unknown is not None:
            self.require_unknown_rule()
        items, y, logits, scores, skipped = self.labelled_outputs(data, labels, with_unknown=True)
        if len(y) == 0:
            what = repr(str(data)) if isinstance(data, (str, Path)) else f"the given {type(data).__name__}"
            raise DataError(f"no example of {what} could be read; nothing to evaluate")
        probs = self._probabilities(logits)
        metrics = self.metrics(y, probs)
        metrics["skipped"] = skipped
        out_scores = None
        if unknown is not None:
            out_scores = self.unknown_inputs_scores(unknown)
            metrics["unknown"] = self.unknown_metrics(y, probs, scores, out_scores)
        return Evaluation(list(items), y, logits, probs, scores, out_scores, metrics)

    def require_unknown_rule(self):
        if self.unknown_rule_ is None:
            raise HeadstartError("this model never answers unknown (it was trained with --unknown-rate 0, learns several "
                                 "labels per row, or has a class named 'unknown'); retrain it with --unknown-rate 0.05 "
                                 "to evaluate unknown inputs")
        return self.unknown_rule_

    def unknown_metrics(self, y: np.ndarray, probs: np.ndarray, in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, Any]:
        """The unknown rule on in-scope rows (labels ``y``) and unknown inputs: AUROC of the
        score; at the saved threshold the share of unknown inputs answered unknown (recall),
        the share of unknown answers that were right (precision), and the in-scope accuracy
        counting an in-scope row answered unknown as wrong."""
        from ..models.unknown import auroc

        rule = self.require_unknown_rule()
        fired_in, fired_out = rule.fired(in_scores), rule.fired(out_scores)
        answered = int(fired_in.sum() + fired_out.sum())
        return {"score": rule.score, "threshold": rule.threshold, "rate": rule.rate,
                "auroc": auroc(in_scores, out_scores), "recall": float(fired_out.mean()) if len(fired_out) else 0.0,
                "precision": float(fired_out.sum() / answered) if answered else 0.0,
                **self._in_scope_unknown(y, probs, fired_in),
                "n_in_scope": int(len(fired_in)), "n_unknown": int(len(fired_out))}

    def _in_scope_unknown(self, y: np.ndarray, probs: np.ndarray, fired: np.ndarray) -> dict[str, float]:
        """In-scope rows under the unknown rule: the share answered unknown, and the accuracy
        counting those as wrong."""
        right = self.objective_.correct(probs, y)  # argmax: probabilities rank as logits
        return {"in_scope_accuracy": float((right & ~fired).mean()) if len(right) else 0.0,
                "in_scope_rejected": float(fired.mean()) if len(fired) else 0.0}

    def _record_fit(self, result, train_summary: dict, skipped: int, items: Sequence[str] | None = None) -> None:
        """Keep what the fit learned about itself: history, the validation protocol and what
        it measured, a temperature fitted on the validation logits (out-of-fold under
        cross-validation: never from rows the scoring model trained on), the calibrated
        validation metrics, and the validation predictions (``items`` names every item the
        fit saw, data then validation set) for reports."""
        from ..data.labels import class_counts

        self.history_ = result.history_dicts()
        self.protocol_ = result.protocol.to_dict()
        self.recipe_ = result.recipe
        self.tried_ = result.tried
        self.head_info_ = {k: v for k, v in result.head.items() if k != "path"}
        self.cv_path_ = result.head.get("path")
        logits = np.asarray(result.val_logits, dtype=np.float64)
        objective = self.objective_
        self.temperature_, self.calibration_ = objective.calibrate(logits, result.val_labels)
        self.val_labels_ = np.asarray(result.val_labels, dtype=np.int64)
        self.val_probs_ = self._probabilities(logits)
        self.val_items_ = [items[int(i)] for i in result.val_rows] if items is not None else None
        # the decision rule (per-label thresholds with several labels) is tuned on the same
        # held-out probabilities; its reported metrics are cross-fitted (each row decided by
        # thresholds tuned without it), so they are not flattered by the tuning
        self.decision_ = objective.fit_decision(self.val_probs_, self.val_labels_)
        self.val_metrics_ = objective.held_out_metrics(self.val_labels_, self.val_probs_, self.classes_, self.decision_,
                                                       seed=self.config.seed)
        self.val_metrics_["protocol"] = self.protocol_["description"]
        self._record_unknown(result.unknown)
        self.train_seconds_ = result.seconds
        self.precision_ = result.precision
        val_summary = {"source": self.protocol_["description"], "n": int(len(self.val_labels_)),
                       "per_class": class_counts(self.val_labels_, self.classes_), "protocol": self.protocol_}
        self.data_summary_ = {"train": train_summary, "val": val_summary, "skipped": skipped}
        log.info("recipe %s; validation %s (%d examples: %s); %.1fs", self.recipe_, summary_line(self.val_metrics_),
                 self.val_metrics_["n"], self.protocol_["description"], result.seconds)

    def _record_unknown(self, unknown: dict | None) -> None:
        """Wrap the decision rule in the unknown rule the fit calibrated, give the model its
        score, and add what it does on the reported in-scope rows to the validation metrics
        (an in-scope row answered unknown counts as wrong there)."""
        if unknown is None:
            return
        from ..models.unknown import attach, histograms

        attach(self.model_, unknown["score"], unknown["k"], unknown["bank"], mix=unknown["mix"])
        self.decision_ = Abstain(self.decision_, unknown["score"], unknown["threshold"], unknown["rate"], unknown["k"],
                                 tuple(unknown["bank"].shape) if unknown["bank"] is not None else ())
        scores = np.asarray(unknown["scores"], dtype=np.float64)
        self.val_metrics_["unknown"] = {
            "score": unknown["score"], "why": unknown["why"], "threshold": unknown["threshold"], "rate": unknown["rate"],
            **({"k": unknown["k"], "bank_rows": int(unknown["bank"].shape[0])} if unknown["bank"] is not None else {}),
            **self._in_scope_unknown(self.val_labels_, self.val_probs_, self.decision_.fired(scores)),
            "histograms": histograms({"in-scope, held out": scores}),
            "protocol": "threshold and rates on the reported held-out in-scope rows",
        }

    def to_config(self) -> dict[str, Any]:
        self._check_fitted()
        cfg: dict[str, Any] = {
            "task": self.task,
            "headstart_version": __version__,
            "labels": list(self.classes_),
            "temperature": float(self.temperature_),
            **({"objective": self.objective_.to_config(), "decision": self.decision_.to_config()}
               if self.objective_.multi_label else {}),
            **({"decision": self.decision_.to_config()} if isinstance(self.decision_, Abstain) else {}),
            **self._config(),
            "head": self.head_config.to_dict(),
            "training": self.config.to_dict(),
        }
        if hasattr(self, "val_metrics_"):
            cfg["summary"] = {
                "recipe": getattr(self, "recipe_", self.config.recipe),
                "val_accuracy": self.val_metrics_["accuracy"],
                "val_macro_f1": self.val_metrics_["macro_f1"],
                "val_n": self.val_metrics_["n"],
                "protocol": getattr(self, "protocol_", None),
                "data": self.data_summary_,
                "precision": self.precision_,
                "train_seconds": round(self.train_seconds_, 2),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if getattr(self, "calibration_", None):
                cfg["summary"]["calibration"] = self.calibration_
            kept = [t for t in getattr(self, "tried_", None) or [] if t.get("kept") and "best_epoch" in t]
            if kept:  # phase 2 as it ran: the epoch kept (of those planned), on how many training rows
                cfg["summary"]["phase2"] = {"epochs": kept[-1]["best_epoch"], "trained_rows": kept[-1].get("trained_rows")}
        return cfg

    def save(self, path: str | Path) -> Path:
        """Write the model directory atomically: config.json + model.safetensors + extras
        (tokenizer, vocabulary) + README.md, a model card."""
        from ..reports.card import CARD_FILE, model_card

        self._check_fitted()
        config = self.to_config()

        def extra(directory: Path) -> None:
            self._write_files(directory)
            card = model_card(config, getattr(self, "val_metrics_", None))
            (directory / CARD_FILE).write_text(card, encoding="utf-8")

        return save_model_dir(path, config, self.model_.state_dict(), extra=extra)

    def _write_files(self, directory: Path) -> None:
        """Extra files for the model directory (written before it is renamed into place)."""

    def _config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _init_from_config(cls, config: dict[str, Any], path: Path, **kwargs: Any):
        """A bare instance with the head and training settings of a saved config."""
        try:
            head = config["head"]
            # Only what this version knows: training settings are a record, not needed to predict.
            known = {f.name for f in dataclasses.fields(TrainConfig)} - {"head", "task"}
            training = {k: v for k, v in config.get("training", {}).items() if k in known}
            training.update(kwargs)
            clf = cls.__new__(cls)
            Classifier.__init__(clf, hidden=head["hidden"], dropout=head["dropout"], pooling=head["pooling"], **training)
            clf.classes_ = list(config["labels"])
            clf.temperature_ = check_temperature(config.get("temperature", 1.0))
            clf.objective_ = objective_from_config(config.get("objective"))
            clf.decision_ = decision_from_config(config.get("decision"), len(clf.classes_))
        except (KeyError, TypeError, ValueError, HeadstartError) as exc:
            raise ModelDirError(f"{str(path)!r}/config.json is incomplete or malformed ({exc})") from None
        clf.saved_config_ = config
        return clf

    def _load_weights(self, path: Path) -> None:
        """Load ``model.safetensors`` strictly into ``model_``, and switch to inference."""
        from .artifact import read_weights

        if isinstance(self.decision_, Abstain):
            from ..models.unknown import attach

            attach(self.model_, self.decision_.score, self.decision_.k, bank_shape=self.decision_.bank_shape or None)
        try:
            self.model_.load_state_dict(read_weights(path), strict=True)
        except RuntimeError as exc:
            raise ModelDirError(
                f"{str(path)!r}/model.safetensors does not match its config.json ({str(exc).splitlines()[0]})"
            ) from None
        self.model_.eval()

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any):
        """Load a model directory: JSON + safetensors (+ tokenizer files), no training data,
        no network, no stored code executed."""
        config = read_config(path)
        if cls.task and config.get("task") != cls.task:
            raise ModelDirError(f"{str(path)!r} holds a {config.get('task')!r} model, not a {cls.task!r} model")
        return cls._from_config(config, Path(path), **kwargs)

    @classmethod
    def _from_config(cls, config: dict[str, Any], path: Path, **kwargs: Any):  # pragma: no cover - abstract
        raise NotImplementedError
