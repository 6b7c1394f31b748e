"""Checks of assignment 'lstm' (chapter 10): the LSTM cell step forward and backward and
backpropagation through time, against torch.nn.LSTM and torch autograd in float64 (gate order
i, f, g, o as torch) and finite differences."""

from __future__ import annotations

import numpy as np

from minilm.classroom.checks import close, grads_of, rng, torch64
from minilm.testing import numerical_grad


def _weights(seed, C=3, H=4, scale=0.5):
    r = rng(seed)
    return (r.standard_normal((4 * H, C)) * scale, r.standard_normal((4 * H, H)) * scale,
            r.standard_normal(4 * H) * 0.1, r.standard_normal(4 * H) * 0.1)


def _torch_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    """y, h_T, c_T and the leaf tensors, by torch.nn.LSTM (one layer) in float64."""
    import torch

    T, B, C = x.shape
    H = W_hh.shape[1]
    lstm = torch.nn.LSTM(C, H, 1).double()
    with torch.no_grad():
        for name, w in (("weight_ih_l0", W_ih), ("weight_hh_l0", W_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(lstm, name).copy_(torch.tensor(w))
    xt, h0t, c0t = torch64(x, h0, c0, grad=True)
    y, (hT, cT) = lstm(xt, (h0t[None], c0t[None]))
    return y, hT[0], cT[0], (xt, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0, h0t, c0t)


def _case(seed, T=4, B=2, C=3, H=4, scale=0.5):
    r = rng(seed + 100)
    return (r.standard_normal((T, B, C)), r.standard_normal((B, H)) * 0.5, r.standard_normal((B, H)) * 0.5,
            *_weights(seed, C, H, scale))


def _tuple(res, n, name):
    if not (isinstance(res, (tuple, list)) and len(res) == n):
        raise AssertionError(f"{name} must return a tuple of {n}, got {type(res).__name__}"
                             + (f" of length {len(res)}" if isinstance(res, (tuple, list)) else ""))
    return res


def cell_forward(s):
    x, h0, c0, W_ih, W_hh, b_ih, b_hh = _case(0, T=1)
    h, c, _ = _tuple(s.lstm.lstm_cell_forward(x[0], h0, c0, W_ih, W_hh, b_ih, b_hh), 3, "lstm_cell_forward")
    y, hT, cT, _ = _torch_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh)
    return close(h, hT, "h_t of one step vs torch.nn.LSTM") + "; " + close(c, cT, "c_t of one step")


def layer_forward(s):
    x, h0, c0, *w = _case(1, T=6)
    y, (hT, cT), _ = _tuple(s.lstm.lstm_layer_forward(x, h0, c0, *w), 3, "lstm_layer_forward")
    ry, rh, rc, _ = _torch_layer(x, h0, c0, *w)
    return close(y, ry, "y (T=6, B=2, H=4) vs torch.nn.LSTM") + "; " + close(cT, rc, "c_T")


def forward_stability(s):
    x, h0, c0, *w = _case(2, T=3, scale=300.0)
    with np.errstate(all="ignore"):
        y, (hT, cT), _ = s.lstm.lstm_layer_forward(x, h0, c0, *w)
    ry, rh, rc, _ = _torch_layer(x, h0, c0, *w)
    return close(y, ry, "y with pre-activations of size ~1e3 (sigmoid must not overflow)")


def cell_backward(s):
    import torch

    x, h0, c0, *w = _case(3, T=1)
    h, c, cache = s.lstm.lstm_cell_forward(x[0], h0, c0, *w)
    r = rng(4)
    dh, dc = r.standard_normal(h0.shape), r.standard_normal(h0.shape)
    y, hT, cT, leaves = _torch_layer(x, h0, c0, *w)
    xt, Wi, Wh, bi, bh, h0t, c0t = leaves
    ref = grads_of((hT * torch.tensor(dh)).sum() + (cT * torch.tensor(dc)).sum(), xt, h0t, c0t, Wi, Wh, bi, bh)
    got = _tuple(s.lstm.lstm_cell_backward(dh, dc, cache), 7, "lstm_cell_backward")
    names = ("dx", "dh_prev", "dc_prev", "dW_ih", "dW_hh", "db_ih", "db_hh")
    ref[0] = ref[0][0]
    notes = [close(g, rr, f"cell {n} vs torch autograd") for g, rr, n in zip(got, ref, names)]
    return notes[0]


def _bptt(s, seed, T=5, B=2, C=3, H=4, final=False, scale=0.5):
    import torch

    x, h0, c0, *w = _case(seed, T=T, B=B, C=C, H=H, scale=scale)
    y, (hT, cT), cache = s.lstm.lstm_layer_forward(x, h0, c0, *w)
    r = rng(seed + 7)
    dy = r.standard_normal((T, B, H))
    dhT, dcT = (r.standard_normal((B, H)), r.standard_normal((B, H))) if final else (None, None)
    ry, rh, rc, leaves = _torch_layer(x, h0, c0, *w)
    loss = (ry * torch.tensor(dy)).sum()
    if final:
        loss = loss + (rh * torch.tensor(dhT)).sum() + (rc * torch.tensor(dcT)).sum()
    ref = grads_of(loss, *leaves)  # x, W_ih, W_hh, b_ih, b_hh, h0, c0
    got = _tuple(s.lstm.lstm_layer_backward(dy, cache, dhT, dcT), 7, "lstm_layer_backward")
    names = ("dx", "dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0")
    notes = [close(g, rr, f"BPTT {n} (T={T}{', with dL/d(h_T, c_T)' if final else ''})")
             for g, rr, n in zip(got, ref, names)]
    return notes[0]


def bptt(s):
    return _bptt(s, 5)


def bptt_final_state(s):
    return _bptt(s, 6, final=True)


def bptt_odd_shapes(s):
    _bptt(s, 7, T=1, B=1, C=1, H=1)
    return _bptt(s, 8, T=9, B=3, C=2, H=5)


def bptt_finite_differences(s):
    x, h0, c0, *w = _case(9, T=3, B=1, C=2, H=2)
    y, _, cache = s.lstm.lstm_layer_forward(x, h0, c0, *w)
    dy = rng(10).standard_normal(np.shape(y))
    got = _tuple(s.lstm.lstm_layer_backward(dy, cache), 7, "lstm_layer_backward")

    def f_x(z):
        return float((s.lstm.lstm_layer_forward(z, h0, c0, *w)[0] * dy).sum())

    def f_whh(z):
        return float((s.lstm.lstm_layer_forward(x, h0, c0, w[0], z, w[2], w[3])[0] * dy).sum())

    close(got[0], numerical_grad(f_x, x.copy()), "BPTT dx vs finite differences", 1e-7, 1e-5)
    return close(got[2], numerical_grad(f_whh, w[1].copy()), "BPTT dW_hh vs finite differences", 1e-7, 1e-5)
