"""A trained language model back from its run folder, in either twin.

``load_run(path)`` reads the checkpoint (``minilm.checkpoint``), rebuilds the tokenizer and
the model its ``meta.json`` describes, and loads ``model.safetensors`` into the NumPy model or
its PyTorch twin (their state dicts have the same keys and shapes, so a run trained by either
loop loads into both). ``minilm generate`` and ``minilm eval`` start here. A run written by ``minilm compress``
(``minilm.compressed``: int8/int4 values and scales, sparse pruned matrices) is decoded to
float32 weights here, so it loads like any other.

Deliberately left out: building models of other kinds (an encoder's loop loads its own).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from minilm.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from minilm.compressed import decode, is_compressed
from minilm.config import LSTMConfig, TransformerConfig
from minilm.numpy.lstm import LSTMLM
from minilm.numpy.transformer import TransformerLM
from minilm.training import tokenizer_from_meta

__all__ = ["load_run"]


def load_run(path: str | os.PathLike, impl: str | None = None, device: str = "cpu",
             attention: str | None = None) -> tuple[Any, Any, Checkpoint]:
    """``(model, tokenizer, ckpt)`` from a run folder or its checkpoint, ready to evaluate.

    ``impl`` ("numpy" or "torch") defaults to the framework that wrote the checkpoint; the
    weights load into either twin. ``attention`` picks the torch Transformer's attention
    ("naive", "sdpa" (the default), "triton"). ``device`` ("cpu", "auto", "cuda", "cuda:1",
    ...) is checked before anything is built: a device torch cannot use is a ValueError
    saying so; the NumPy twin runs on the CPU only. The torch model's device is
    ``next(model.parameters()).device``.
    """
    if impl not in (None, "numpy", "torch"):
        raise ValueError(f"impl must be 'numpy' or 'torch', got {impl!r}")
    ckpt = load_checkpoint(path)
    impl = impl or ckpt.framework
    if impl == "numpy" and device not in ("cpu", "auto"):
        raise ValueError(f"device {device!r}: the NumPy twin runs on the CPU only (the torch "
                         f"twin, --impl torch, runs on other devices)")
    meta = ckpt.meta
    try:
        kind = meta["model"]
        config = (TransformerConfig if kind == "transformer" else LSTMConfig).from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: its model config is unreadable ({e})") from None
    tokenizer = tokenizer_from_meta(meta, ckpt.path)
    if is_compressed(meta):  # written by `minilm compress`: int8/int4 + scales, sparse masks
        try:
            ckpt.weights = decode(ckpt.weights, meta["compressed"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: compressed weights cannot be decoded ({e})") from None
    weights = ckpt.weights
    float64 = any(v.dtype == np.float64 for v in weights.values())
    if impl == "torch":
        return _torch_model(ckpt, kind, config, float64, device, attention), tokenizer, ckpt
    Model = TransformerLM if kind == "transformer" else LSTMLM
    model = Model(config, seed=0, dtype=np.float64 if float64 else np.float32)
    try:
        model.load_state_dict(weights)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the model ({e})") from None
    return model, tokenizer, ckpt


def _torch_model(ckpt: Checkpoint, kind: str, config: Any, float64: bool, device: str,
                 attention: str | None) -> Any:
    """The PyTorch twin (torch is an optional dependency: imported here, on first use)."""
    try:
        import torch

        from minilm.torch.lstm import LSTMLM as TorchLSTMLM
        from minilm.torch.train import resolve_device
        from minilm.torch.transformer import TransformerLM as TorchTransformerLM
    except ImportError:
        raise ImportError("loading into the torch twin needs PyTorch: pip install "
                          "'minilm[torch]', or use the NumPy twin") from None
    dev = resolve_device(device)  # a ValueError (not a CheckpointError) for a bad device
    if kind == "transformer":
        # the weights do not depend on the attention backend: sdpa unless asked
        model = TorchTransformerLM(config, seed=0, attention=attention or "sdpa")
    else:
        model = TorchLSTMLM(config, seed=0, fused=True)
    if float64:
        model = model.to(torch.float64)
    try:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.weights.items()})
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the model ({e})") from None
    return model.to(dev).eval()
