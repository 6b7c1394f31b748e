"""The compressed weights format: int8/int4 values with their scales, pruned matrices sparse.

One dict of arrays (written as one safetensors file) plus JSON metadata (``"format":
"minilm-compressed"``, the bit width, the shapes). For each entry ``name`` of a float state
dict:

| stored | when |
| --- | --- |
| ``name`` (float32) | a vector (bias, LayerNorm), or a matrix left in float |
| ``name.int8`` / ``name.int4`` + ``name.scale`` | a quantised matrix (int4: two per byte, ``pack_int4``) |
| ``name.mask`` + ``name.values`` / ``.int8`` / ``.int4`` | a pruned matrix: a bitmask of the kept entries (one bit each, ``np.packbits``) and only the kept values (+ ``name.scale`` when quantised) |

So a pruned matrix costs n/8 bytes of mask plus its kept values: 50 % sparsity in float32 is
2.125 bytes per entry instead of 4; in int8, 0.625. Quantisation of a pruned matrix keeps its
zeros exact (0 quantises to 0). ``decode`` gives the float32 state dict back (dequantised,
the kept values scattered into zeros): a compressed checkpoint loads into the ordinary model.

A run folder written by ``minilm compress`` holds these arrays as its ``model.safetensors``
and the metadata under ``"compressed"`` in its ``meta.json``; ``minilm.runs.load_run``
decodes them, so ``minilm generate`` and ``minilm eval`` take such a run like any other.

Deliberately left out: sparse formats with indices (CSR), entropy coding, keeping the
weights quantised in memory at load (they are dequantised).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from minilm.numpy import quantize as nq

__all__ = ["FORMAT", "encode", "decode", "save_compressed", "load_compressed", "is_compressed"]

FORMAT = "minilm-compressed"


def is_compressed(meta: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's ``meta.json`` says its weights are in this format."""
    c = meta.get("compressed")
    return isinstance(c, Mapping) and c.get("format") == FORMAT


def encode(state: Mapping[str, Any], bits: int | None = None, per_channel: bool = True,
           group_size: int | None = None, masks: Mapping[str, np.ndarray] | None = None,
           extra: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays to store (table in the module docstring) and the JSON metadata.

    ``bits`` None keeps float32 values; 8 or 4 quantises every matrix (``per_channel`` /
    ``group_size`` as in ``minilm.numpy.quantize.quantize``). Matrices in ``masks`` are
    stored sparse. ``extra`` is added to the metadata.
    """
    if bits is not None:
        nq.check_bits(bits)
    masks = masks or {}
    out: dict[str, np.ndarray] = {}
    shapes = {}
    for name, a in state.items():
        a = nq.to_numpy(a)
        shapes[name] = list(a.shape)
        matrix = a.ndim == 2
        if not matrix or (bits is None and name not in masks):
            out[name] = np.ascontiguousarray(a, dtype=np.float32)
            continue
        keep = masks.get(name)
        if bits is None:
            values = a[keep].astype(np.float32)  # (n_kept,)
            out[name + ".values"] = values
        else:
            q, s = nq.quantize(a, bits, per_channel, group_size)
            out[name + ".scale"] = np.asarray(s, dtype=np.float32)
            if keep is not None:
                q = q[keep]  # (n_kept,): the zeros are implied by the mask
            if bits == 8:
                out[name + ".int8"] = q
            else:
                flat = q.reshape(-1) if keep is not None else q
                if flat.shape[-1] % 2:  # int4 packs pairs: pad one zero (dropped at load)
                    flat = np.concatenate([flat, np.zeros(flat.shape[:-1] + (1,), np.int8)], axis=-1)
                out[name + ".int4"] = nq.pack_int4(flat)
        if keep is not None:
            out[name + ".mask"] = np.packbits(keep.reshape(-1))  # (ceil(n / 8),) uint8
    meta = {"format": FORMAT, "version": 1, "bits": bits, "per_channel": per_channel,
            "group_size": group_size, "shapes": shapes, **(extra or {})}
    return out, meta


def decode(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The float32 state dict back from ``encode``'s arrays and metadata."""
    shapes = meta["shapes"]
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        n = int(np.prod(shape))
        if name in arrays:
            out[name] = np.asarray(arrays[name], dtype=np.float32).reshape(shape)
            continue
        keep = None
        if name + ".mask" in arrays:
            keep = np.unpackbits(arrays[name + ".mask"], count=n).astype(bool).reshape(shape)
        if name + ".values" in arrays:
            w = np.zeros(shape, np.float32)
            w[keep] = arrays[name + ".values"]
            out[name] = w
            continue
        if name + ".int8" in arrays:
            q = np.asarray(arrays[name + ".int8"], dtype=np.int8)
        elif name + ".int4" in arrays:
            q = nq.unpack_int4(arrays[name + ".int4"])
            q = q[: int(keep.sum())] if keep is not None else q.reshape(shape)
        else:
            raise ValueError(f"compressed weights: nothing stored for {name!r}")
        if keep is not None:
            dense = np.zeros(shape, np.int8)
            dense[keep] = q
            q = dense
        out[name] = nq.dequantize(q.reshape(shape), np.asarray(arrays[name + ".scale"])).astype(np.float32)
    return out


def save_compressed(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> int:
    """Write one safetensors file (metadata as JSON under ``"minilm"``); returns its bytes."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # (np.ascontiguousarray would turn a per-tensor scale of shape () into (1,))
    save_file({k: np.array(v, order="C", copy=True) for k, v in arrays.items()}, str(tmp),
              metadata={"minilm": json.dumps(meta)})
    os.replace(tmp, path)
    return path.stat().st_size


def load_compressed(path: str | os.PathLike, raw: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(float32 state dict, metadata)`` from a file ``save_compressed`` wrote; with ``raw``
    the stored arrays themselves (int8 values, scales, masks) instead of the decoded state."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compressed weights file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("minilm", "{}"))
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a minilm compressed weights file (format {meta.get('format')!r})")
    return (arrays if raw else decode(arrays, meta)), meta
