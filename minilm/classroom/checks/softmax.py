"""Checks of assignment 'softmax' (chapter 3): softmax, log-softmax, cross-entropy and their
backward passes, against torch.softmax / log_softmax / F.cross_entropy and torch autograd in
float64, and finite differences."""

from __future__ import annotations

import numpy as np

from minilm.classroom.checks import array, check, close, grads_of, rng, torch64
from minilm.testing import numerical_grad


def _torch():
    import torch
    import torch.nn.functional as F

    return torch, F


def softmax_forward(s):
    torch, _ = _torch()
    x = rng(0).standard_normal((2, 3, 7))
    notes = [close(s.functional.softmax(x), torch.softmax(torch64(x), -1), "softmax(x) along the last axis")]
    notes.append(close(s.functional.softmax(x, axis=1), torch.softmax(torch64(x), 1), "softmax(x, axis=1)"))
    return "; ".join(notes)


def softmax_stability(s):
    torch, _ = _torch()
    x = np.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4 + 2.0, -1e4 + 1.0], [800.0, 0.0, -800.0]])
    with np.errstate(all="ignore"):
        y = s.functional.softmax(x)
    return close(y, torch.softmax(torch64(x), -1), "softmax of logits +-1e4 (use the max trick)")


def softmax_odd_shapes(s):
    torch, _ = _torch()
    x1 = np.array([3.0])
    close(s.functional.softmax(x1), np.array([1.0]), "softmax of a single logit")
    x = rng(1).standard_normal((4, 1, 5)).astype(np.float32)
    y = s.functional.softmax(x, axis=0)
    array(y, (4, 1, 5), "softmax of float32 input", dtype=np.float32)
    return close(y, torch.softmax(torch64(x), 0), "softmax(x, axis=0) of a (4, 1, 5) float32 array", 1e-6, 1e-5)


def log_softmax_forward(s):
    torch, _ = _torch()
    x = rng(2).standard_normal((3, 11))
    return close(s.functional.log_softmax(x), torch.log_softmax(torch64(x), -1), "log_softmax(x)")


def log_softmax_stability(s):
    torch, _ = _torch()
    x = np.array([[1e4, 1e4, 0.0], [-1e4, 3.0, -5e3]])
    with np.errstate(all="ignore"):
        y = s.functional.log_softmax(x)
    return close(y, torch.log_softmax(torch64(x), -1), "log_softmax of logits +-1e4 (log-sum-exp with the max)")


def softmax_backward(s):
    torch, _ = _torch()
    r = rng(3)
    x, dy = r.standard_normal((4, 6)), r.standard_normal((4, 6))
    xt = torch64(x, grad=True)
    yt = torch.softmax(xt, -1)
    (dx_ref,) = grads_of((yt * torch64(dy)).sum(), xt)
    y = yt.detach().numpy()
    note = close(s.functional.softmax_backward(dy, y), dx_ref, "softmax_backward(dy, y) vs torch autograd")
    x2 = r.standard_normal((3, 5))
    dy2 = r.standard_normal((3, 5))
    y2 = torch.softmax(torch64(x2), 0).numpy()
    num = numerical_grad(lambda z: float((torch.softmax(torch64(z), 0).numpy() * dy2).sum()), x2.copy())
    close(s.functional.softmax_backward(dy2, y2, axis=0), num, "softmax_backward(dy, y, axis=0) vs finite differences", 1e-6, 1e-5)
    return note


def log_softmax_backward(s):
    torch, _ = _torch()
    r = rng(4)
    x, dy = r.standard_normal((5, 7)), r.standard_normal((5, 7))
    xt = torch64(x, grad=True)
    yt = torch.log_softmax(xt, -1)
    (dx_ref,) = grads_of((yt * torch64(dy)).sum(), xt)
    return close(s.functional.log_softmax_backward(dy, yt.detach().numpy()), dx_ref,
                 "log_softmax_backward(dy, y) vs torch autograd")


def _ce_case(seed, shape=(3, 4), V=9):
    r = rng(seed)
    return r.standard_normal(shape + (V,)) * 2, r.integers(0, V, size=shape)


def cross_entropy_forward(s):
    torch, F = _torch()
    logits, t = _ce_case(5)
    ref = F.cross_entropy(torch64(logits).reshape(-1, 9), torch.tensor(t.reshape(-1)))
    loss = s.functional.cross_entropy(logits, t)
    check(np.ndim(loss) == 0, f"cross_entropy must return a scalar (the mean), got shape {np.shape(loss)}")
    return close(np.asarray(loss), ref, "cross_entropy(logits (3, 4, 9), targets (3, 4))")


def cross_entropy_masks(s):
    torch, F = _torch()
    logits, t = _ce_case(6)
    t[0, :3] = -100
    t[2, 1] = -100
    ref = F.cross_entropy(torch64(logits).reshape(-1, 9), torch.tensor(t.reshape(-1)), ignore_index=-100)
    close(np.asarray(s.functional.cross_entropy(logits, t)), ref, "cross_entropy with ignored targets (-100)")
    t2 = np.where((t == 3) | (t == -100), 7, t)
    t2[1, 0] = 7
    ref2 = F.cross_entropy(torch64(logits).reshape(-1, 9), torch.tensor(t2.reshape(-1)), ignore_index=7)
    return close(np.asarray(s.functional.cross_entropy(logits, t2, ignore_index=7)), ref2,
                 "cross_entropy with ignore_index=7")


def cross_entropy_stability(s):
    torch, F = _torch()
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4], [5e3, 5e3, 0.0]])
    t = np.array([1, 0, 2])
    with np.errstate(all="ignore"):
        loss = s.functional.cross_entropy(logits, t)
    return close(np.asarray(loss), F.cross_entropy(torch64(logits), torch.tensor(t)),
                 "cross_entropy of logits +-1e4 (must be finite: use log_softmax)")


def cross_entropy_backward(s):
    torch, F = _torch()
    logits, t = _ce_case(7)
    lt = torch64(logits, grad=True)
    (ref,) = grads_of(F.cross_entropy(lt.reshape(-1, 9), torch.tensor(t.reshape(-1))), lt)
    return close(s.functional.cross_entropy_backward(logits, t), ref, "cross_entropy_backward vs torch autograd")


def cross_entropy_backward_masks(s):
    torch, F = _torch()
    logits, t = _ce_case(8)
    t[1, :] = -100
    lt = torch64(logits, grad=True)
    (ref,) = grads_of(F.cross_entropy(lt.reshape(-1, 9), torch.tensor(t.reshape(-1))), lt)
    close(s.functional.cross_entropy_backward(logits, t), ref,
          "cross_entropy_backward with ignored targets (zero rows, mean over the counted ones)")
    t_all = np.full_like(t, -100)
    g = s.functional.cross_entropy_backward(logits, t_all)
    return close(g, np.zeros_like(logits), "cross_entropy_backward with every target ignored (all zeros, no NaN)")


def cross_entropy_backward_finite_differences(s):
    logits, t = _ce_case(9, shape=(2, 3), V=5)
    t[0, 1] = -100

    def loss(z):  # the mean NLL in plain NumPy (log-sum-exp with the max), the counted rows only
        z2, t2 = z.reshape(-1, 5), t.reshape(-1)
        keep = t2 != -100
        m = z2.max(-1, keepdims=True)
        logp = z2 - m - np.log(np.exp(z2 - m).sum(-1, keepdims=True))
        return float(-logp[keep, t2[keep]].mean())

    num = numerical_grad(loss, logits.copy())
    return close(s.functional.cross_entropy_backward(logits, t), num,
                 "cross_entropy_backward vs finite differences", 1e-7, 1e-5)
