"""Optimisers in NumPy: SGD, AdamW, gradient clipping and the warm-up + cosine schedule.

Each one is written from the update equations of its PyTorch counterpart and matches it step
for step (same formulas, same order of operations where it matters):

- ``SGD``   ~ ``torch.optim.SGD(..., dampening=0, nesterov=False)``
- ``AdamW`` ~ ``torch.optim.AdamW(..., amsgrad=False)`` (decoupled weight decay)
- ``clip_grad_norm`` ~ ``torch.nn.utils.clip_grad_norm_`` (L2 norm, the same 1e-6 epsilon)
- ``cosine_schedule`` ~ nanoGPT's ``get_lr`` (linear warm-up, cosine decay, floor)

Notation: theta a parameter array, g its gradient, t the step count starting at 1 (after the
increment), lr the learning rate, lambda the weight decay.

``params`` is either a model's ``params`` dict (name -> array, the LIVE arrays, updated in
place by ``.step(grads)``) or a list of parameter groups like torch's::

    AdamW([{"params": {"emb.weight": W}, "weight_decay": 0.1},
           {"params": {"ln.bias": b}, "weight_decay": 0.0}], lr=1e-3)

Options missing from a group default to the constructor's arguments. ``grads`` passed to
``step`` is a dict with exactly the parameter names of all groups together. ``.lr`` reads the
first group's learning rate and, when set, sets it in every group (the schedule does this
every step).

``state_dict()`` holds plain arrays, numbers, strings and lists, nothing pickled::

    {"step": t,
     "state": {name: {"exp_avg": m, "exp_avg_sq": v}},          # AdamW
              {name: {"momentum_buffer": b}},                    # SGD with momentum
     "param_groups": [{"params": [names...], "lr": ..., ...}, ...]}

``load_state_dict`` restores the moments AND the groups' hyper-parameters, as torch does.

Deliberately left out: Nesterov momentum, dampening, AMSGrad, ``maximize``, sparse
gradients, gradients that are ``None`` (every parameter must have a gradient), norms other
than L2 in clipping.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from minilm.numpy.layers import to_numpy

__all__ = ["SGD", "AdamW", "clip_grad_norm", "cosine_schedule"]


def _check_number(cls: str, name: str, value: Any, low: float = 0.0, high: float | None = None,
                  high_inclusive: bool = True) -> float:
    """``value`` as a float, or ValueError if it is not a finite number in [low, high]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{cls}: {name} must be a number, got {value!r}") from None
    bad_high = high is not None and (v > high if high_inclusive else v >= high)
    if not math.isfinite(v) or v < low or bad_high:
        bound = "" if high is None else (f", {high}]" if high_inclusive else f", {high})")
        interval = f"[{low}{bound or ', inf)'}"
        raise ValueError(f"{cls}: {name} must be in {interval}, got {value!r}")
    return v


class _Optimizer:
    """What SGD and AdamW share: parameter groups, gradient checks, ``lr``, state dicts.

    Subclasses set ``_defaults_keys`` (group options), implement ``_check_group`` and
    ``_update(name, p, g, group)`` and name their per-parameter buffers in ``_buffers``.
    """

    _buffers: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, np.ndarray] | Sequence[Mapping[str, Any]],
                 defaults: dict[str, Any]) -> None:
        cls = type(self).__name__
        if isinstance(params, Mapping):
            groups_in: list[Mapping[str, Any]] = [{"params": params}]
        elif isinstance(params, (list, tuple)):
            groups_in = list(params)
        else:
            raise ValueError(f"{cls}: params must be a dict name -> array or a list of param "
                             f"groups, got {type(params).__name__}")
        if not groups_in:
            raise ValueError(f"{cls}: got an empty list of param groups")
        self.param_groups: list[dict[str, Any]] = []
        self._params: dict[str, np.ndarray] = {}  # every parameter, by name
        for gi, g in enumerate(groups_in):
            if not isinstance(g, Mapping) or "params" not in g or not isinstance(g["params"], Mapping):
                raise ValueError(f"{cls}: param group {gi} must be a dict with a 'params' dict "
                                 f"(name -> array), got {g!r:.80}")
            unknown = sorted(set(g) - set(defaults) - {"params"})
            if unknown:
                raise ValueError(f"{cls}: param group {gi} has unknown options {unknown}; known "
                                 f"are {sorted(defaults)}")
            group = {**defaults, **{k: v for k, v in g.items() if k != "params"}}
            names = list(g["params"])
            for name in names:
                p = g["params"][name]
                if name in self._params:
                    raise ValueError(f"{cls}: parameter {name!r} appears in more than one group")
                if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                    raise ValueError(f"{cls}: parameter {name!r} must be a floating-point NumPy "
                                     f"array, got {type(p).__name__} {getattr(p, 'dtype', '')}")
                if not p.flags.writeable:
                    raise ValueError(f"{cls}: parameter {name!r} is read-only; the optimiser "
                                     f"updates parameters in place")
                self._params[name] = p
            group["params"] = names
            self._check_group(group, gi)
            self.param_groups.append(group)
        self.step_count = 0  # t: optimiser steps taken
        self.state: dict[str, dict[str, np.ndarray]] = {name: {} for name in self._params}

    # --- hooks for subclasses ---
    def _check_group(self, group: dict[str, Any], gi: int) -> None:
        raise NotImplementedError

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, group: dict[str, Any]) -> None:
        raise NotImplementedError

    # --- learning rate ---
    @property
    def lr(self) -> float:
        """The learning rate of the first group; setting it sets every group's."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        v = _check_number(type(self).__name__, "lr", value)
        for group in self.param_groups:
            group["lr"] = v

    # --- the step ---
    def _check_grads(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        cls = type(self).__name__
        if not isinstance(grads, Mapping):
            raise ValueError(f"{cls}.step: grads must be a dict name -> array, got "
                             f"{type(grads).__name__}")
        missing = sorted(set(self._params) - set(grads))
        unknown = sorted(set(grads) - set(self._params))
        if missing or unknown:
            raise ValueError(f"{cls}.step: grads do not match the parameters: missing {missing}, "
                             f"unknown {unknown}")
        out = {}
        for name, p in self._params.items():
            g = np.asarray(grads[name])
            if g.shape != p.shape:
                raise ValueError(f"{cls}.step: grad {name!r} has shape {g.shape}, the parameter "
                                 f"has {p.shape}")
            out[name] = g
        return out

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One update of every parameter, in place, from ``grads`` (name -> array, same shapes)."""
        checked = self._check_grads(grads)
        self.step_count += 1
        for group in self.param_groups:
            for name in group["params"]:
                self._update(name, self._params[name], checked[name], group)

    # --- state ---
    def state_dict(self) -> dict[str, Any]:
        """Copies of the optimiser state: plain arrays, numbers, strings and lists."""
        groups = []
        for group in self.param_groups:
            g = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
            g["params"] = list(group["params"])
            groups.append(g)
        return {
            "step": int(self.step_count),
            "state": {name: {k: b.copy() for k, b in s.items()} for name, s in self.state.items()},
            "param_groups": groups,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what ``state_dict()`` returned (same parameter names, groups and shapes)."""
        cls = type(self).__name__
        for key in ("step", "state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"{cls}.load_state_dict: missing key {key!r}")
        groups = list(state_dict["param_groups"])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{cls}.load_state_dict: {len(groups)} param groups saved, the "
                             f"optimiser has {len(self.param_groups)}")
        new_groups = []
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if list(saved["params"]) != list(group["params"]):
                raise ValueError(f"{cls}.load_state_dict: group {gi} holds {list(saved['params'])},"
                                 f" the optimiser's holds {list(group['params'])}")
            new = dict(group)
            for k in group:
                if k != "params" and k in saved:
                    v = saved[k]
                    new[k] = tuple(float(x) for x in v) if isinstance(group[k], tuple) else v
            self._check_group(new, gi)
            new_groups.append(new)
        state = state_dict["state"]
        missing = sorted(set(self._params) - set(state))
        unknown = sorted(set(state) - set(self._params))
        if missing or unknown:
            raise ValueError(f"{cls}.load_state_dict: state does not match the parameters: "
                             f"missing {missing}, unknown {unknown}")
        new_state: dict[str, dict[str, np.ndarray]] = {}
        for name, p in self._params.items():
            s = {}
            for k, b in state[name].items():
                if k not in self._buffers:
                    raise ValueError(f"{cls}.load_state_dict: unknown buffer {k!r} for {name!r}; "
                                     f"known are {list(self._buffers)}")
                b = to_numpy(b)
                if b.shape != p.shape:
                    raise ValueError(f"{cls}.load_state_dict: {name}.{k} has shape {b.shape}, "
                                     f"the parameter has {p.shape}")
                s[k] = b.astype(p.dtype, copy=True)
            new_state[name] = s
        step = int(state_dict["step"])
        if step < 0:
            raise ValueError(f"{cls}.load_state_dict: step must be >= 0, got {step}")
        self.param_groups, self.state, self.step_count = new_groups, new_state, step


class SGD(_Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay (torch's SGD).

    For each parameter theta with gradient g (dampening 0, no Nesterov)::

        g <- g + lambda * theta                 (weight decay, coupled: added to the gradient)
        b <- g                 at t = 1         (momentum buffer, if momentum mu != 0)
        b <- mu * b + g        at t > 1
        g <- b
        theta <- theta - lr * g
    """

    _buffers = ("momentum_buffer",)

    def __init__(self, params: Mapping[str, np.ndarray] | Sequence[Mapping[str, Any]], lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _check_group(self, group: dict[str, Any], gi: int) -> None:
        for k in ("lr", "momentum", "weight_decay"):
            group[k] = _check_number("SGD", f"{k} (group {gi})", group[k])

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, group: dict[str, Any]) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd != 0:
            # g <- g + lambda * theta
            g = g + wd * p
        if mu != 0:
            state = self.state[name]
            if "momentum_buffer" not in state:
                # b_1 = g_1
                state["momentum_buffer"] = np.array(g, dtype=p.dtype, copy=True)
            else:
                # b_t = mu * b_{t-1} + g_t
                b = state["momentum_buffer"]
                b *= mu
                b += g
            g = state["momentum_buffer"]
        # theta <- theta - lr * g
        p -= lr * g


class AdamW(_Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), exactly as torch.optim.AdamW.

    For each parameter theta with gradient g at step t (t = 1, 2, ...)::

        theta <- theta * (1 - lr * lambda)                  (decoupled decay, before the step)
        m <- beta1 * m + (1 - beta1) * g                     (first moment)
        v <- beta2 * v + (1 - beta2) * g^2                   (second moment)
        m_hat = m / (1 - beta1^t);  v_hat = v / (1 - beta2^t)  (bias corrections)
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    computed, as torch does, as ``theta -= (lr / (1 - beta1^t)) * m / (sqrt(v) /
    sqrt(1 - beta2^t) + eps)``. m and v start at zero.
    """

    _buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Mapping[str, np.ndarray] | Sequence[Mapping[str, Any]], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    def _check_group(self, group: dict[str, Any], gi: int) -> None:
        group["lr"] = _check_number("AdamW", f"lr (group {gi})", group["lr"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"AdamW: betas (group {gi}) must be a pair (beta1, beta2), got "
                             f"{betas!r}")
        group["betas"] = tuple(
            _check_number("AdamW", f"beta{i + 1} (group {gi})", b, 0.0, 1.0, high_inclusive=False)
            for i, b in enumerate(betas))
        group["eps"] = _check_number("AdamW", f"eps (group {gi})", group["eps"])
        group["weight_decay"] = _check_number("AdamW", f"weight_decay (group {gi})",
                                              group["weight_decay"])

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        t = self.step_count
        state = self.state[name]
        if not state:
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if wd != 0:
            # theta <- theta * (1 - lr * lambda)
            p *= 1.0 - lr * wd
        # m <- m + (1 - beta1) * (g - m)   ( = beta1 * m + (1 - beta1) * g, torch's lerp)
        m += (1.0 - beta1) * (g - m)
        # v <- beta2 * v + (1 - beta2) * g^2
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        # step_size = lr / (1 - beta1^t);  denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        bias_correction1 = 1.0 - beta1**t
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
        step_size = lr / bias_correction1
        denom = np.sqrt(v)
        denom /= bias_correction2_sqrt
        denom += eps
        # theta <- theta - step_size * m / denom
        p -= step_size * (m / denom)


def clip_grad_norm(grads: Mapping[str, np.ndarray] | Sequence[np.ndarray], max_norm: float,
                   error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; in place.

    Returns the total norm BEFORE clipping, as ``torch.nn.utils.clip_grad_norm_`` does::

        ||g|| = sqrt(sum over arrays a, entries i of g_{a,i}^2)
        g <- g * min(1, max_norm / (||g|| + 1e-6))

    ``grads`` is a dict name -> array (or a list of arrays); each array is multiplied in place.
    A non-finite norm (inf/NaN in a gradient) raises ValueError when ``error_if_nonfinite``,
    otherwise it propagates into the gradients (torch's default behaviour).

    >>> g = {"w": np.array([3.0, 4.0])}
    >>> clip_grad_norm(g, 1.0), g["w"].round(6).tolist()
    (5.0, [0.6, 0.8])
    """
    if not _is_positive_finite(max_norm):
        raise ValueError(f"clip_grad_norm: max_norm must be a positive finite number, got "
                         f"{max_norm!r}")
    arrays = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    for a in arrays:
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"clip_grad_norm: every gradient must be a floating-point NumPy "
                             f"array (clipped in place), got {type(a).__name__}")
    # ||g||^2 = sum_a ||g_a||^2  (each term a dot product of the flattened array with itself)
    total_sq = sum(float(np.vdot(a.reshape(-1), a.reshape(-1))) for a in arrays)
    total_norm = math.sqrt(total_sq)  # inf or NaN if a gradient holds one
    if error_if_nonfinite and not math.isfinite(total_norm):
        raise ValueError(f"clip_grad_norm: the total gradient norm is {total_norm}")
    # clip_coef = min(1, max_norm / (||g|| + 1e-6)); min() keeps NaN as torch's clamp does
    clip_coef = min(max_norm / (total_norm + 1e-6), 1.0)
    if clip_coef != 1.0:
        for a in arrays:
            a *= clip_coef
    return total_norm


def _is_positive_finite(x: Any) -> bool:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v > 0


def cosine_schedule(step: int, max_lr: float, min_lr: float, warmup_steps: int,
                    total_steps: int) -> float:
    """The learning rate for optimiser step ``step`` (0-based): linear warm-up, cosine decay, floor.

    nanoGPT's ``get_lr(it)``, with ``lr_decay_iters = total_steps``::

        step <  warmup_steps:              lr = max_lr * (step + 1) / (warmup_steps + 1)
        warmup_steps <= step <= total:     r  = (step - warmup_steps) / (total_steps - warmup_steps)
                                           lr = min_lr + 0.5 * (1 + cos(pi * r)) * (max_lr - min_lr)
        step >  total_steps:               lr = min_lr

    So the first step (0) already has a small non-zero rate, the rate reaches ``max_lr`` at
    ``step == warmup_steps`` and ``min_lr`` at ``step == total_steps``. If ``total_steps <=
    warmup_steps`` there is no decay phase: after the warm-up the rate is ``min_lr``.

    >>> cosine_schedule(0, 1.0, 0.1, 4, 14)    # 1 * 1/5
    0.2
    >>> cosine_schedule(9, 1.0, 0.1, 4, 14)    # r = 1/2, cos(pi/2) = 0: halfway, 0.1 + 0.45
    0.55
    """
    for name, v in (("step", step), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"cosine_schedule: {name} must be an int >= 0, got {v!r}")
    max_lr = _check_number("cosine_schedule", "max_lr", max_lr)
    min_lr = _check_number("cosine_schedule", "min_lr", min_lr)
    if min_lr > max_lr:
        raise ValueError(f"cosine_schedule: min_lr={min_lr} must not exceed max_lr={max_lr}")
    # BEGIN SOLUTION
    if step < warmup_steps:
        # lr = max_lr * (step + 1) / (warmup_steps + 1)
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step > total_steps or total_steps <= warmup_steps:
        return min_lr
    # r = (step - warmup) / (total - warmup) in [0, 1]
    decay_ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    # lr = min_lr + (1 + cos(pi r)) / 2 * (max_lr - min_lr)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (max_lr - min_lr)
    # END SOLUTION
