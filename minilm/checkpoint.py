"""Checkpoints and run folders: file input/output only (no model, no training loop).

A checkpoint is a folder of three files, replaced as a whole at every save::

    runs/<name>/checkpoint/
        model.safetensors    the weights, under their ``state_dict()`` names
        state.safetensors    every other array of the run's state (optimiser moments, the LSTM's
                             carried state, torch's RNG states, ...), under its path in the tree
        meta.json            everything else: framework, config, args, tokenizer, step, NumPy
                             bit-generator state, the numbers and strings of the optimiser
                             state, and the tree's skeleton, whose array leaves read
                             ``{"__array__": "<path>"}``

``safetensors`` stores bare arrays and a JSON header, so reading a checkpoint never unpickles
anything: a checkpoint from a stranger cannot run code. ``safetensors.numpy`` and
``safetensors.torch`` read the same file, so ``model.safetensors`` loads into the NumPy twin
and the PyTorch twin alike (``load_state_dict`` takes either kind of array), and the Hugging
Face tools open it. minilm reads and writes it through ``safetensors.numpy``: tensors are
copied to NumPy on the way out, so this module never needs torch.

Writes are atomic. The new checkpoint is written to a hidden folder next to the old one
(each file flushed and fsynced), then two renames swap it in::

    checkpoint/ -> .checkpoint.old/      .checkpoint.new-XXXX/ -> checkpoint/      rm .checkpoint.old/

A crash before the swap leaves the old checkpoint as it was; a crash between the two renames
leaves ``.checkpoint.old/``, which ``load_checkpoint`` falls back on. Every file and folder is
created with the mode the user's umask gives (as ``open`` does), never a private 0600.

Checkpoints of minilm's first format (``checkpoint.npz`` / ``checkpoint.pt``) are refused with
one line saying so. Every problem reading a checkpoint (missing, cut short, not a checkpoint,
a model that does not match) is a ``CheckpointError`` (a ``ValueError``) naming the path.

A run folder ``runs/<name>/`` holds ``checkpoint/``, ``config.json`` (model config + training
args, for people to read), ``tokenizer.json``, ``log.jsonl`` (one JSON record per logged step
or evaluation) and ``loss.png`` (when matplotlib is installed).

Deliberately left out: keeping more than the latest checkpoint, sharded weight files.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import safetensors.numpy

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "FORMAT",
    "VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "load_weights",
    "atomic_write",
    "write_json",
    "RunFolder",
    "plot_losses",
    "plotting_problem",
]

FORMAT = "minilm-checkpoint"
VERSION = 2
CHECKPOINT_DIR = "checkpoint"
WEIGHTS_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.safetensors", "meta.json"
OLD_FORMAT_FILES = ("checkpoint.npz", "checkpoint.pt")  # version 1, before safetensors


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not match what it is loaded into."""


# ---------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then move it into place.

    temp file in the same folder -> flush -> fsync -> os.replace(temp, path) -> fsync(folder).
    ``os.replace`` is atomic on POSIX and Windows, so readers see the old file or the new
    one, never half of one. If ``write`` raises, the temporary file is removed and the old
    ``path`` is untouched. The file gets mode 0666 minus the umask, like any ``open(path,
    "w")`` (``tempfile.mkstemp`` would make it 0600: unreadable to the classmates a run is
    shared with).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if hasattr(os, "O_DIRECTORY"):
        try:
            dfd = os.open(folder, os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------
# State trees <-> (JSON skeleton, flat dict of arrays)


def _as_numpy(x: Any) -> np.ndarray | None:
    """``x`` as a C-contiguous NumPy array if it is an array or a torch tensor, else None."""
    if isinstance(x, np.ndarray):
        return np.array(x, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is not None and isinstance(x, torch.Tensor):
        return np.array(x.detach().cpu().numpy(), order="C")
    return None


def _split(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """JSON skeleton of ``obj``; its arrays/tensors go into ``arrays`` under their path.

    dicts with str keys stay dicts; dicts with other keys (torch optimiser state is keyed by
    int) become ``{"__items__": [[key, value], ...]}``; tuples become ``{"__tuple__": [...]}``.
    """
    a = _as_numpy(obj)
    if a is not None:
        if path in arrays:
            raise ValueError(f"checkpoint: two arrays would be stored under {path!r}")
        arrays[path] = a
        return {"__array__": path}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, _sub(path, k), arrays) for k, v in obj.items()}
        return {"__items__": [[k, _split(v, _sub(path, k), arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, _sub(path, i), arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, _sub(path, i), arrays) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {path!r}")


def _sub(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def _join(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of ``_split``."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__items__"}:
            return {k: _join(v, arrays) for k, v in obj["__items__"]}  # JSON keeps ints ints here
        if set(obj) == {"__tuple__"}:
            return tuple(_join(v, arrays) for v in obj["__tuple__"])
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# The checkpoint folder


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns.

    ``meta`` holds ``meta.json`` (``framework``, ``model``, ``config``, ``args``, ``step``,
    ``tokenizer``, ... whatever the writer put there); ``weights`` the arrays of
    ``model.safetensors`` by name; ``state`` the rest of the saved tree with its arrays put
    back. Every array is a NumPy array.
    """

    path: Path  # the checkpoint folder
    meta: dict[str, Any]
    weights: dict[str, np.ndarray]
    state: dict[str, Any]

    @property
    def framework(self) -> str:
        return self.meta.get("framework", "?")

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def save_checkpoint(folder: str | os.PathLike, meta: dict[str, Any], weights: dict[str, Any],
                    state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint folder: ``weights`` (name -> array or tensor), ``state`` (a tree of
    dicts, lists, tuples, arrays/tensors and plain values) and ``meta`` (JSON-able). Atomic:
    the old checkpoint is replaced only once the new one is complete on disk (module docstring).
    """
    folder = Path(folder)
    tensors = {}
    for k, v in weights.items():
        a = _as_numpy(v)
        if a is None:
            raise TypeError(f"checkpoint: weight {k!r} is a {type(v).__name__}, not an array")
        tensors[k] = a
    arrays: dict[str, np.ndarray] = {}
    skeleton = _split(state or {}, "", arrays)
    full_meta = {"format": FORMAT, "version": VERSION, **meta, "state": skeleton}
    header = {"format": FORMAT, "step": str(meta.get("step", ""))}  # safetensors' str -> str metadata
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    new = parent / f".{folder.name}.new-{secrets.token_hex(4)}"
    old = parent / f".{folder.name}.old"
    new.mkdir()
    try:
        for name, data in ((WEIGHTS_FILE, safetensors.numpy.save(tensors, metadata=header)),
                           (STATE_FILE, safetensors.numpy.save(arrays, metadata=header)),
                           (META_FILE, (json.dumps(full_meta, indent=1) + "\n").encode())):
            atomic_write(new / name, lambda f, data=data: f.write(data))
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(new, folder)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder for ``path``: a run folder, the checkpoint folder, or a file in it."""
    p = Path(path)
    if p.is_file() or p.suffix in (".npz", ".pt", ".safetensors", ".json"):
        if p.suffix in (".npz", ".pt"):
            _refuse_old_format(p)
        if not p.exists():
            raise CheckpointError(f"{p}: no such checkpoint file or run folder")
        p = p.parent
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such checkpoint file or run folder")
    if (p / META_FILE).is_file():
        return p
    for candidate in (p / CHECKPOINT_DIR, p / f".{CHECKPOINT_DIR}.old"):  # .old: a crash mid-swap
        if (candidate / META_FILE).is_file():
            return candidate
    for name in OLD_FORMAT_FILES:
        if (p / name).is_file():
            _refuse_old_format(p / name)
    raise CheckpointError(f"{p}: no checkpoint in this folder (expected {CHECKPOINT_DIR}/{META_FILE})")


def _refuse_old_format(p: Path) -> None:
    raise CheckpointError(
        f"{p}: a checkpoint in minilm's first format ({p.suffix}), which this version no longer "
        f"reads; it reads safetensors checkpoints ({CHECKPOINT_DIR}/): train the run again")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint (a run folder, its checkpoint folder or a file in it); unpickles nothing."""
    folder = find_checkpoint(path)
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not a readable checkpoint file ({_first_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path}: not a minilm checkpoint (format {got!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: checkpoint version {meta.get('version')} is not {VERSION}")
    weights = _read_safetensors(folder / WEIGHTS_FILE)
    arrays = _read_safetensors(folder / STATE_FILE)
    try:
        state = _join(meta.pop("state", {}), arrays)
    except KeyError as e:
        raise CheckpointError(f"{folder / STATE_FILE}: is missing array {e}") from None
    return Checkpoint(path=folder, meta=meta, weights=weights, state=state)


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The weights alone, name -> NumPy array: for ``model.load_state_dict`` of either twin."""
    p = Path(path)
    return _read_safetensors(p if p.suffix == ".safetensors" else find_checkpoint(p) / WEIGHTS_FILE)


def _read_safetensors(p: Path) -> dict[str, np.ndarray]:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{p}: cannot be read ({_first_line(e)})") from None
    try:
        return safetensors.numpy.load(data)
    except Exception as e:  # SafetensorError: a cut-short or foreign file
        raise CheckpointError(f"{p}: not a readable safetensors file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Run folders


class RunFolder:
    """``runs/<name>/``: where one training run leaves its files (only rank 0 writes).

    Nothing here knows what was trained: any loop (a language model, an encoder, a
    classifier) keeps its checkpoint, log and plot in one.
    """

    FILES = ("config.json", "tokenizer.json", "log.jsonl", "loss.png")

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    def holds_run(self) -> bool:
        """True when a run has left anything here (a checkpoint, old or new, or its files)."""
        names = (CHECKPOINT_DIR, *OLD_FORMAT_FILES, "config.json", "log.jsonl")
        return any((self.root / n).exists() for n in names)

    def make(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Remove the files a run leaves here (``--overwrite``); anything else stays."""
        for name in (*self.FILES, *OLD_FORMAT_FILES):
            (self.root / name).unlink(missing_ok=True)
        for name in (CHECKPOINT_DIR, f".{CHECKPOINT_DIR}.old"):
            if (self.root / name).is_dir():
                shutil.rmtree(self.root / name)

    def append_log(self, records: Iterable[dict[str, Any]]) -> None:
        with open(self.log, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut short by a crash
        return out

    def truncate_log(self, step: int) -> list[dict[str, Any]]:
        """Keep only records up to ``step`` (resuming: later ones are about to be redone)."""
        kept = [r for r in self.read_log() if r.get("step", 0) <= step]
        data = "".join(json.dumps(r) + "\n" for r in kept).encode()
        atomic_write(self.log, lambda f: f.write(data))
        return kept


def plotting_problem() -> str:
    """'' when ``plot_losses`` can draw; else why not, in one line naming the missing package.

    matplotlib is optional (the ``torch`` extra brings it; a NumPy-only install has none).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as e:
        return f"matplotlib cannot draw a PNG here ({e})"
    return ""


def plot_losses(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Draw train loss (per step) and validation loss (per evaluation) into a PNG.

    matplotlib is imported here, through its object-oriented API and the Agg canvas, so no
    global backend is switched; without matplotlib this returns None and draws nothing
    (``plotting_problem()`` says why).
    """
    if plotting_problem():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        s, l = np.array(train, dtype=float).T
        ax.plot(s, l, lw=0.6, alpha=0.4, color="C0", label="train (per step)")
        if len(l) >= 20:  # a running mean over ~2% of the steps reads better than raw noise
            w = max(5, len(l) // 50)
            smooth = np.convolve(l, np.ones(w) / w, mode="valid")  # (len - w + 1,)
            ax.plot(s[w - 1:], smooth, lw=1.5, color="C0", label=f"train (mean of {w})")
    if val:
        s, l = np.array(val, dtype=float).T
        ax.plot(s, l, "o-", color="C1", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))
