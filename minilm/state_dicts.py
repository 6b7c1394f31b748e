"""The check every model of both twins makes before ``load_state_dict`` changes anything.

A state_dict is a mapping from parameter names to arrays (NumPy) or tensors (PyTorch); the
twins share its keys and shapes, so one check serves both: it compares the shapes only.

Deliberately left out: dtype checks (loading casts to the model's dtype) and any conversion.
"""

from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["check_state_dict"]


def check_state_dict(own: Mapping[str, Sequence[int]], given: Mapping[str, Sequence[int]],
                     strict: bool = True) -> None:
    """Raise ValueError naming what ``given`` gets wrong for a model whose parameters are ``own``.

    ``own`` and ``given`` map names to shapes. With ``strict``, every name of ``own`` must be in
    ``given`` and no other; without, the names both have are loaded (at least one). Shapes of
    the shared names must match either way.

    >>> check_state_dict({"w": (2, 3)}, {"w": (3, 2), "b": (3,)})
    Traceback (most recent call last):
    ...
    ValueError: load_state_dict: unexpected keys ['b'], shape mismatches: w: expected (2, 3), got (3, 2)
    """
    missing = sorted(set(own) - set(given)) if strict else []
    unexpected = sorted(set(given) - set(own)) if strict else []
    bad_shapes = [f"{k}: expected {tuple(own[k])}, got {tuple(given[k])}"
                  for k in own if k in given and tuple(given[k]) != tuple(own[k])]
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected}")
    if bad_shapes:
        parts.append("shape mismatches: " + "; ".join(bad_shapes))
    if parts:
        raise ValueError("load_state_dict: " + ", ".join(parts))
    if not set(own) & set(given):
        raise ValueError("load_state_dict: no key in common with this model")
