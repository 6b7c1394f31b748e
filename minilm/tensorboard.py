"""TensorBoard event files of a training run: ``minilm train --tensorboard``.

``TensorBoardObserver(log_dir)`` is a ``minilm.training.Observer``: the shared ``Reporter``
that every training loop uses (``minilm train`` in both twins, and any command built on the
same machinery) calls it on rank 0, and it writes

| what | tag | when |
| --- | --- | --- |
| scalars: training loss, learning rate, gradient norm (before clipping), any extra metric | the ``log.jsonl`` key (``train_loss``, ``lr``, ``grad_norm``, ...) | every step |
| scalars: validation loss, perplexity, bits per char, accuracy if the loop measures it, mean training loss | the ``log.jsonl`` key (``val_loss``, ``val_perplexity``, ...) | every evaluation |
| the printed text sample | ``sample`` | every evaluation |
| histograms of every weight and of its last gradient | ``weights/<name>``, ``grads/<name>`` | every evaluation |

so what TensorBoard shows is exactly what ``log.jsonl`` holds. The writer is
``torch.utils.tensorboard.SummaryWriter`` when torch is there (the PyTorch loop) and
``tensorboardX.SummaryWriter`` otherwise (the NumPy loop without torch); both write the same
event files. Neither is a core dependency: ``pip install 'minilm[tensorboard]'``.

A command offers the flag with ``add_tensorboard_argument(parser)`` and builds the observers
with ``tensorboard_observers(ns, run_folder)`` (an empty list without the flag), which it
passes to its loop as ``observers=``; ``minilm train`` does exactly that. The events go to
``<run folder>/tensorboard/``; watch them with ``tensorboard --logdir runs/``.

Deliberately left out: graphs of the model, embeddings projector, profiling traces,
hyper-parameter tables.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minilm.training import Observer

__all__ = ["TensorBoardObserver", "summary_writer", "add_tensorboard_argument",
           "tensorboard_observers", "EXTRA_HINT", "LOG_DIR"]

LOG_DIR = "tensorboard"  # inside the run folder
EXTRA_HINT = "pip install 'minilm[tensorboard]'"
_SKIP = {"step", "time"}  # record keys that are not metrics


def summary_writer(log_dir: str | Path, backend: str = "auto") -> Any:
    """A SummaryWriter on ``log_dir``: torch's (``backend="torch"``), tensorboardX's
    (``"tensorboardX"``) or the first that imports (``"auto"``: torch's if torch is already
    imported, else tensorboardX's first).
    ImportError naming the extra to install when none can be used."""
    if backend not in ("auto", "torch", "tensorboardX"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'tensorboardX', got {backend!r}")
    order = [backend]
    if backend == "auto":  # torch's when torch is loaded anyway; the NumPy loop needs no torch
        order = ["torch", "tensorboardX"] if "torch" in sys.modules else ["tensorboardX", "torch"]
    problems = []
    for name in order:
        try:
            if name == "torch":
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                return SummaryWriter(log_dir=str(log_dir))
            from tensorboardX import SummaryWriter as XSummaryWriter

            return XSummaryWriter(logdir=str(log_dir))
        except ImportError as e:
            problems.append(f"{name}: {e}")
    raise ImportError(f"--tensorboard needs TensorBoard's writer: {EXTRA_HINT} "
                      f"({'; '.join(problems)})")


class TensorBoardObserver(Observer):
    """Writes a run's scalars, samples and histograms as TensorBoard events (module docstring)."""

    def __init__(self, log_dir: str | Path, backend: str = "auto", histograms: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.writer = summary_writer(self.log_dir, backend)
        self.histograms = histograms

    def _scalars(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for k, v in record.items():
            if k in _SKIP or isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                continue
            if math.isfinite(float(v)):
                self.writer.add_scalar(k, float(v), step)

    def on_step(self, record: dict[str, Any]) -> None:
        self._scalars(record)

    def on_eval(self, record: dict[str, Any], sample: str,
                params: Callable[[], dict[str, np.ndarray]] | None) -> None:
        self._scalars(record)
        step = int(record["step"])
        if sample:
            self.writer.add_text("sample", _markdown_block(sample), step)
        if self.histograms and params is not None:
            for name, w in params().items():
                self.writer.add_histogram(f"weights/{name}", np.asarray(w, dtype=np.float64), step)
        self.writer.flush()

    def on_grads(self, step: int, grads: Callable[[], dict[str, np.ndarray]]) -> None:
        if self.histograms:
            for name, g in grads().items():
                self.writer.add_histogram(f"grads/{name}", np.asarray(g, dtype=np.float64), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def add_tensorboard_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--tensorboard`` to a command's parser."""
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files into RUN/tensorboard/ (losses, lr, "
                             "grad norm, validation metrics, samples, weight and gradient "
                             f"histograms); needs {EXTRA_HINT}; view with: tensorboard --logdir runs/")


def tensorboard_observers(ns: argparse.Namespace, run_folder: str | Path | None,
                          backend: str = "auto") -> list[Observer]:
    """``[TensorBoardObserver(run_folder / "tensorboard")]`` when ``ns.tensorboard`` is set,
    else ``[]``. The writer is made now, so a missing extra is reported before training."""
    if not getattr(ns, "tensorboard", False):
        return []
    if run_folder is None:
        raise ValueError("--tensorboard writes into the run folder: give --out")
    return [TensorBoardObserver(Path(run_folder) / LOG_DIR, backend)]


def _markdown_block(text: str) -> str:
    """TensorBoard renders text as Markdown: indent it as a code block to keep newlines."""
    return "\n".join("    " + line for line in text.splitlines())
