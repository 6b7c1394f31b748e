"""Checkpoints and run folders: written atomically, read back without unpickling anything.

A checkpoint is ONE file holding a tree of state (model weights, optimiser state, RNG states,
the LSTM's carried state, ...) split into

- its arrays, stored by their path in the tree (``model/tok_emb.weight``,
  ``optim/state/0/exp_avg``, ...), and
- everything else (config, training args, step, tokenizer JSON, NumPy bit-generator state,
  numbers and strings in the optimiser state), stored as one JSON document whose leaves that
  were arrays say ``{"__array__": "<path>"}``.

The NumPy loop writes ``checkpoint.npz`` (``np.savez``; the JSON is a ``uint8`` array named
``__meta__``; read with ``allow_pickle=False``). The PyTorch loop writes ``checkpoint.pt``
(``torch.save`` of ``{"__meta__": uint8 tensor, "arrays": {path: tensor}}``; read with
``torch.load(weights_only=True)``). Neither reader will unpickle an arbitrary object, so a
checkpoint from a stranger cannot run code.

Writes are atomic: the file is written to a temporary name in the same folder, flushed and
fsynced, then ``os.replace``-d over the old one; a crash mid-write leaves the old checkpoint
as it was. Every problem reading one (missing, truncated, not a checkpoint, a pickled object,
a model that does not match) is a ``CheckpointError`` (a ``ValueError``) naming the file.

A run folder ``runs/<name>/`` holds ``checkpoint.{npz,pt}``, ``config.json`` (model config +
training args, for people to read), ``tokenizer.json``, ``log.jsonl`` (one JSON record per
logged step or evaluation) and ``loss.png`` (when matplotlib is installed).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "FORMAT",
    "VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "atomic_write",
    "write_json",
    "RunFolder",
    "plot_losses",
    "plotting_problem",
    "load_run",
]

FORMAT = "minilm-checkpoint"
VERSION = 1
CHECKPOINT_NAMES = {"numpy": "checkpoint.npz", "torch": "checkpoint.pt"}
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not match what it is loaded into."""


# ---------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then move it into place.

    temp file in the same folder -> flush -> fsync -> os.replace(temp, path) -> fsync(folder).
    ``os.replace`` is atomic on POSIX and Windows, so readers see the old file or the new
    one, never half of one. If ``write`` raises, the temporary file is removed and the old
    ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        try:
            dfd = os.open(path.parent, os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------
# State trees <-> (JSON skeleton, flat dict of arrays)


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _split(obj: Any, path: str, arrays: dict[str, Any]) -> Any:
    """JSON skeleton of ``obj``; its arrays/tensors go into ``arrays`` under their path.

    dicts with str keys stay dicts; dicts with other keys (torch optimiser state is keyed by
    int) become ``{"__items__": [[key, value], ...]}``; tuples become ``{"__tuple__": [...]}``.
    """
    if isinstance(obj, np.ndarray) or _is_torch_tensor(obj):
        if path in arrays:
            raise ValueError(f"checkpoint: two arrays would be stored under {path!r}")
        arrays[path] = obj
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


def _join(obj: Any, arrays: dict[str, Any]) -> Any:
    """Inverse of ``_split``."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__items__"}:
            return {_key(k): _join(v, arrays) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(_join(v, arrays) for v in obj["__tuple__"])
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


def _key(k: Any) -> Any:
    return k  # ints stay ints (JSON keeps list items' types)


# ---------------------------------------------------------------------------------------------
# The checkpoint file


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns.

    ``meta`` holds the JSON part (``framework``, ``model``, ``config``, ``args``, ``step``,
    ``tokenizer``, ...); ``state`` the tree with its arrays put back (NumPy arrays from an
    ``.npz``, CPU tensors from a ``.pt``), e.g. ``state["model"]`` is a state dict.
    """

    path: Path
    meta: dict[str, Any]
    state: dict[str, Any]

    @property
    def framework(self) -> str:
        return self.meta["framework"]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def model_state(self) -> dict[str, Any]:
        return self.state["model"]


def save_checkpoint(path: str | os.PathLike, meta: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``meta`` (JSON-able) and ``state`` (a tree of arrays/tensors and plain values).

    The format follows the suffix: ``.npz`` (NumPy arrays; tensors are converted) or ``.pt``
    (torch tensors; NumPy arrays are converted). Atomic (see ``atomic_write``).
    """
    path = Path(path)
    arrays: dict[str, Any] = {}
    skeleton = _split(state, "", arrays)
    full_meta = {"format": FORMAT, "version": VERSION, **meta, "state": skeleton}
    meta_bytes = np.frombuffer(json.dumps(full_meta).encode(), dtype=np.uint8)
    if path.suffix == ".npz":
        np_arrays = {}
        for k, v in arrays.items():
            if _is_torch_tensor(v):
                v = v.detach().cpu().numpy()
            np_arrays[k] = np.array(v, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        return atomic_write(path, lambda f: np.savez(f, **{_META_KEY: meta_bytes}, **np_arrays))
    if path.suffix == ".pt":
        import torch

        tensors = {}
        for k, v in arrays.items():
            t = torch.from_numpy(np.array(v, order="C")) if isinstance(v, np.ndarray) else v
            tensors[k] = t.detach().cpu().contiguous().clone()
        payload = {_META_KEY: torch.from_numpy(meta_bytes.copy()), "arrays": tensors}
        return atomic_write(path, lambda f: torch.save(payload, f))
    raise ValueError(f"checkpoint path must end in .npz or .pt, got {str(path)!r}")


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file for ``path``: the file itself, or the one in a run folder."""
    p = Path(path)
    if p.is_dir():
        found = [p / name for name in CHECKPOINT_NAMES.values() if (p / name).is_file()]
        if not found:
            raise CheckpointError(
                f"{p}: no checkpoint in this folder (expected checkpoint.pt or checkpoint.npz)")
        return max(found, key=lambda q: q.stat().st_mtime)  # the newer if both
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file or run folder")
    return p


def _holds_objects(what: str) -> str:
    return (f"not a minilm checkpoint (it holds objects other than {what} and plain data, which "
            f"minilm never unpickles)")


def _torch_load(p: Path) -> Any:
    """``torch.load(p, weights_only=True)``, its failures turned into our own short reasons.

    torch's own message for a refused object suggests retrying with ``weights_only=False``,
    the very protection minilm relies on, so it is never passed on.
    """
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{p}: a PyTorch checkpoint needs torch installed") from e
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive (minilm never the legacy format)
        raise CheckpointError(f"{p}: not a torch checkpoint file (or one cut short)")
    try:
        with warnings.catch_warnings():  # torch notes pickle protocols it did not expect
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():  # an object the safe unpickler refused
            raise CheckpointError(f"{p}: {_holds_objects('tensors')}") from None
        raise CheckpointError(f"{p}: not a readable torch checkpoint file (corrupt)") from None
    except Exception:  # zip members missing or damaged, EOF, ...
        raise CheckpointError(f"{p}: not a readable torch checkpoint file (corrupt)") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file (or the one in a run folder) without unpickling anything."""
    p = find_checkpoint(path)
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
            meta_bytes = raw.pop(_META_KEY)
            arrays = raw
        elif p.suffix == ".pt":
            payload = _torch_load(p)
            if not isinstance(payload, dict) or _META_KEY not in payload:
                raise ValueError("no __meta__ entry")
            meta_bytes = payload[_META_KEY].numpy()
            arrays = payload["arrays"]
        else:
            raise CheckpointError(f"{p}: a checkpoint file ends in .npz or .pt")
        meta = json.loads(bytes(np.asarray(meta_bytes, dtype=np.uint8)).decode())
    except CheckpointError:
        raise
    except Exception as e:  # zipfile/json/EOF errors: all mean "not a good checkpoint"
        if "allow_pickle" in str(e):  # np.load met an object array (stored with pickle)
            raise CheckpointError(f"{p}: {_holds_objects('arrays')}") from None
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{p}: not a readable minilm checkpoint: {reason}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a minilm checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{p}: checkpoint version {meta.get('version')} is not {VERSION}")
    try:
        state = _join(meta.pop("state"), arrays)
    except KeyError as e:
        raise CheckpointError(f"{p}: checkpoint is missing array {e}") from None
    return Checkpoint(path=p, meta=meta, state=state)


# ---------------------------------------------------------------------------------------------
# Run folders


class RunFolder:
    """``runs/<name>/``: where one training run leaves its files (only rank 0 writes)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def checkpoint(self, framework: str) -> Path:
        return self.root / CHECKPOINT_NAMES[framework]

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

    def make(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

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


# ---------------------------------------------------------------------------------------------
# Loading a trained model back


def load_run(path: str | os.PathLike, impl: str | None = None, device: str = "cpu",
             attention: str | None = None):
    """``(model, tokenizer, ckpt)`` from a checkpoint file or run folder, ready to evaluate.

    ``impl`` ("numpy" or "torch") defaults to the framework that wrote the checkpoint; the
    weights load into either twin (their state dicts have the same keys). ``attention`` picks
    the torch Transformer's attention ("naive", "sdpa" (the default), "triton"). ``device``
    ("cpu", "auto", "cuda", "cuda:1", ...) is checked before anything is built: a device torch
    cannot use is a ValueError saying so; the NumPy twin runs on the CPU only. The torch
    model's device is ``next(model.parameters()).device``.
    """
    from minilm.config import LSTMConfig, TransformerConfig
    from minilm.numpy.train import tokenizer_from_meta

    ckpt = load_checkpoint(path)
    impl = impl or ckpt.framework
    if impl not in ("numpy", "torch"):
        raise ValueError(f"impl must be 'numpy' or 'torch', got {impl!r}")
    if impl == "numpy" and device not in ("cpu", "auto"):
        raise ValueError(f"device {device!r}: the NumPy twin runs on the CPU only (the torch "
                         f"twin, --impl torch, runs on other devices)")
    if impl == "torch":
        try:
            from minilm.torch.train import resolve_device
        except ImportError:
            raise ImportError("loading into the torch twin needs PyTorch: pip install "
                              "'minilm[torch]', or use the NumPy twin") from None
        device = resolve_device(device)
    meta = ckpt.meta
    try:
        kind = meta["model"]
        config = (TransformerConfig if kind == "transformer" else LSTMConfig).from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: its model config is unreadable ({e})") from None
    tokenizer = tokenizer_from_meta(meta, ckpt.path)
    weights = ckpt.state["model"]
    first = next(iter(weights.values()))
    dtype_name = str(first.dtype).replace("torch.", "")
    try:
        if impl == "numpy":
            if kind == "transformer":
                from minilm.numpy.transformer import TransformerLM as Model
            else:
                from minilm.numpy.lstm import LSTMLM as Model
            dtype = np.float64 if dtype_name == "float64" else np.float32
            model = Model(config, seed=0, dtype=dtype)
            model.load_state_dict({k: (v.detach().cpu().numpy() if _is_torch_tensor(v) else v)
                                   for k, v in weights.items()})
        else:
            import torch

            if kind == "transformer":
                from minilm.torch.transformer import TransformerLM

                # the weights do not depend on the attention backend: sdpa unless asked
                model = TransformerLM(config, seed=0, attention=attention or "sdpa")
            else:
                from minilm.torch.lstm import LSTMLM

                model = LSTMLM(config, seed=0, fused=True)
            if dtype_name == "float64":
                model = model.to(torch.float64)
            model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
            model = model.to(device).eval()
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the model ({e})") from None
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the model ({e})") from None
    return model, tokenizer, ckpt
