"""Optional TensorBoard logging (``headstart train --log tensorboard``).

The training loop knows nothing of TensorBoard: it logs each epoch's record on the
``headstart`` logger (``extra={"epoch_record": record}``), and the handler here turns those
records into scalars, so runs show up live in ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import HeadstartError


def summary_writer_class():
    """``SummaryWriter``, or a clear error when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise HeadstartError(
            "--log tensorboard needs the tensorboard package; run `pip install 'headstart[tensorboard]'` "
            "(or `pip install tensorboard`)"
        ) from None
    return SummaryWriter


class TensorBoardHandler(logging.Handler):
    """Writes the scalars of every log record carrying an ``epoch_record``: loss and
    accuracy (train and validation), learning rate and epoch time, one step per epoch
    across all phases, plus the phase's index so phase boundaries show."""

    def __init__(self, log_dir: str | Path):
        super().__init__(level=logging.INFO)
        self.writer = summary_writer_class()(log_dir=str(log_dir))
        self.step = 0
        self.phases: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        epoch = getattr(record, "epoch_record", None)
        if epoch is None:
            return
        try:
            self.step += 1
            if not self.phases or self.phases[-1] != epoch.phase:
                self.phases.append(epoch.phase)
            w, s = self.writer, self.step
            w.add_scalar("loss/train", epoch.train_loss, s)
            w.add_scalar("accuracy/train", epoch.train_accuracy, s)
            if epoch.val_loss is not None:  # a refit on every row has nothing to validate on
                w.add_scalar("loss/val", epoch.val_loss, s)
                w.add_scalar("accuracy/val", epoch.val_accuracy, s)
            w.add_scalar("lr", epoch.lr, s)
            w.add_scalar("epoch_seconds", epoch.seconds, s)
            w.add_scalar("phase", len(self.phases) - 1, s)
            w.flush()
        except Exception:  # noqa: BLE001 - logging must never stop training
            self.handleError(record)

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            super().close()
