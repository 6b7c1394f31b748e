"""A multi-layer LSTM language model in NumPy, with back-propagation through time by hand.

One LSTM cell step, for input x_t (B, C_in) and state (h_{t-1}, c_{t-1}) each (B, H), with
the gates in torch's order i, f, g, o (input, forget, cell candidate, output; ``GATES`` below,
the one place both twins read it from, through ``gate_slices``)::

    i_t = sigma(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
    f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    g_t = tanh (W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

The four gate matrices are stacked in that order into ``weight_ih`` (4H, C_in) = [W_ii; W_if;
W_ig; W_io] and ``weight_hh`` (4H, H), and the biases into ``bias_ih``, ``bias_hh`` (4H,):
exactly ``torch.nn.LSTM``'s layout, so its weights move across unchanged. The 4H
pre-activations are called ``a`` below: a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh.

Layer l > 0 reads the h_t of layer l - 1 (C_in = H); layer 0 reads the token embedding
(C_in = d_embed). The model::

    x_t = emb[idx_t]                                   # (B, d_embed)
    h^l_t, c^l_t = cell_l(h^{l-1}_t, (h^l_{t-1}, c^l_{t-1}))    l = 0 .. n_layer - 1
    logits_t = h^{L-1}_t @ W_head^T + b_head           # (B, V); W_head = emb when tied

Parameter names (``model.params`` and ``state_dict()`` keys, the same in the PyTorch twin
``minilm.torch.lstm``; the ``lstm.`` entries are ``torch.nn.LSTM``'s own names)::

    emb.weight (V, d_embed)
    lstm.weight_ih_l{k} (4H, C_in)   lstm.weight_hh_l{k} (4H, H)
    lstm.bias_ih_l{k} (4H,)          lstm.bias_hh_l{k} (4H,)          k = 0 .. n_layer - 1
    head.weight (V, H)               only when config.tie_weights is False
    head.bias (V,)                   always (tying shares the weight matrix only)

State: ``(h, c)``, each ``(n_layer, B, H)`` (the ``torch.nn.LSTM`` convention); ``None`` means
zeros. ``forward(idx, state)`` returns the state after the last token, so a long text can be
read window by window with the state carried across (truncated back-propagation through
time: the gradient of a window stops at its first token, the state's VALUE flows on).

Initialisation, from ``np.random.default_rng(seed)`` in the key order above, drawn in float64
and rounded to the model's dtype: every ``lstm.*`` weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))
(torch's ``nn.LSTM`` default), ``emb.weight`` and ``head.weight`` ~ U(-0.1, 0.1) (PyTorch's
word-language-model example), ``head.bias`` = 0.

Numerical note: sigma(a) is computed as 0.5 * (1 + tanh(a / 2)), the same function, which
cannot overflow in exp() for large negative a.

Layout: inside, sequences are time-major ``(T, B, C)`` (what the time loop walks over); the
model's inputs and outputs are batch-first ``(B, T)`` / ``(B, T, V)`` like the Transformer's.
The only Python loop is the one over time: the input projection W_ih x_t + b_ih is one
matrix product for all T steps at once, before the loop, and the weight gradients are one
product each after the backward loop.

Deliberately left out: dropout (``config.dropout`` is ignored: the NumPy model is the
deterministic reference; the PyTorch twin applies it between layers in training mode),
bidirectional and projected (``proj_size``) LSTMs, peepholes, gradient of the carried-in
state in ``loss_and_grads`` (``lstm_backward`` returns it).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from minilm.config import LSTMConfig
from minilm.numpy.layers import (
    param_dtype,
    check_targets,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    to_numpy,
)
from minilm.state_dicts import check_state_dict

__all__ = [
    "GATES",
    "gate_slices",
    "LSTMLM",
    "init_params",
    "param_shapes",
    "sigmoid",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "lstm_layer_forward",
    "lstm_layer_backward",
    "lstm_forward",
    "lstm_backward",
]

EMB_INIT = 0.1  # emb.weight, head.weight ~ U(-0.1, 0.1)

# The order of the four H-row blocks of weight_ih, weight_hh, bias_ih, bias_hh (and so of the
# pre-activations a and the gates): torch.nn.LSTM's. Both twins split the 4H axis with
# gate_slices, so this line is the only place the order is written.
GATES = ("i", "f", "g", "o")  # input, forget, cell candidate, output


def gate_slices(H: int) -> dict[str, slice]:
    """Where each gate sits along the 4H axis, in ``GATES`` order.

    >>> gate_slices(3)["g"]
    slice(6, 9, None)
    """
    return {name: slice(k * H, (k + 1) * H) for k, name in enumerate(GATES)}


def sigmoid(a: np.ndarray) -> np.ndarray:
    """sigma(a) = 1 / (1 + exp(-a)), computed as 0.5 * (1 + tanh(a / 2)) (no overflow)."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _sigmoid_(a: np.ndarray) -> None:
    """a <- sigmoid(a), in place (the same operations, so the same bits, without temporaries)."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5


# ---------------------------------------------------------------------------------------------
# One cell step. The core works on the pre-activations a: (B, 4H); the x part of a (W_ih x +
# b_ih + b_hh) may be computed for all time steps before the loop.


def _step_forward(ax: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, W_hh_T: np.ndarray,
                  gates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step given ax = W_ih x_t + b_ih + b_hh (B, 4H) and W_hh^T (H, 4H), contiguous (a
    transposed view would make every step's matrix product slower); writes [i, f, g, o] into
    ``gates`` (in ``GATES`` order). Returns h_t, c_t, tanh(c_t), each (B, H).
    """
    at = gate_slices(h_prev.shape[-1])
    # a = (W_ih x_t + b_ih + b_hh) + W_hh h_{t-1}
    np.matmul(h_prev, W_hh_T, out=gates)  # (B, 4H)
    gates += ax
    i, f, g, o = gates[:, at["i"]], gates[:, at["f"]], gates[:, at["g"]], gates[:, at["o"]]  # (B, H) views
    # i, f, o = sigma(a_i), sigma(a_f), sigma(a_o);  g = tanh(a_g)   (in place: a becomes the gates)
    _sigmoid_(i)
    _sigmoid_(f)
    np.tanh(g, out=g)
    _sigmoid_(o)
    # c_t = f_t * c_{t-1} + i_t * g_t
    c = f * c_prev + i * g  # (B, H)
    # h_t = o_t * tanh(c_t)
    tanh_c = np.tanh(c)  # (B, H)
    h = o * tanh_c  # (B, H)
    return h, c, tanh_c


def _step_backward(dh: np.ndarray, dc: np.ndarray, gates: np.ndarray, c_prev: np.ndarray,
                   tanh_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of one step: dh, dc = dL/dh_t, dL/dc_t (B, H) (dc: through c_{t+1} only).

    Returns da = dL/da (B, 4H) (pre-activations, in [i, f, g, o] order) and dL/dc_{t-1}.
    The caller gets dL/dh_{t-1} = da W_hh and dL/dx_t = da W_ih from da.
    """
    at = gate_slices(dh.shape[-1])
    i, f, g, o = gates[:, at["i"]], gates[:, at["f"]], gates[:, at["g"]], gates[:, at["o"]]  # (B, H) each
    # h_t = o_t * tanh(c_t):  do = dh * tanh(c_t);  dc += dh * o_t * (1 - tanh(c_t)^2)
    do = dh * tanh_c
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    da = np.empty_like(gates)  # (B, 4H)
    # c_t = f_t * c_{t-1} + i_t * g_t:  di = dc * g;  df = dc * c_{t-1};  dg = dc * i
    # and through the nonlinearities: sigma' = s (1 - s), tanh' = 1 - t^2
    da[:, at["i"]] = dc * g * i * (1.0 - i)
    da[:, at["f"]] = dc * c_prev * f * (1.0 - f)
    da[:, at["g"]] = dc * i * (1.0 - g * g)
    da[:, at["o"]] = do * o * (1.0 - o)
    # dL/dc_{t-1} = dc * f_t
    dc_prev = dc * f
    return da, dc_prev


def lstm_cell_forward(x: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, W_ih: np.ndarray,
                      W_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, Any]:
    """One LSTM step: x (B, C_in), h_prev, c_prev (B, H), W_ih (4H, C_in), W_hh (4H, H),
    b_ih, b_hh (4H,) -> h, c (B, H), cache. The equations are in the module docstring."""
    # a_x = W_ih x_t + b_ih + b_hh
    ax = x @ W_ih.T + (b_ih + b_hh)  # (B, 4H)
    gates = np.empty_like(ax)  # (B, 4H)
    h, c, tanh_c = _step_forward(ax, h_prev, c_prev, np.ascontiguousarray(W_hh.T), gates)
    return h, c, (x, h_prev, c_prev, W_ih, W_hh, gates, tanh_c)


def lstm_cell_backward(dh: np.ndarray, dc: np.ndarray, cache: Any) -> tuple[np.ndarray, ...]:
    """Gradients of ``lstm_cell_forward`` from dh = dL/dh_t and dc = dL/dc_t (B, H) each,
    dc counting only what reaches c_t other than through h_t (e.g. from the next step).

    Returns (dx (B, C_in), dh_prev (B, H), dc_prev (B, H), dW_ih, dW_hh, db_ih, db_hh).
    """
    x, h_prev, c_prev, W_ih, W_hh, gates, tanh_c = cache
    da, dc_prev = _step_backward(dh, dc, gates, c_prev, tanh_c)  # (B, 4H), (B, H)
    # a = W_ih x + b_ih + W_hh h_prev + b_hh
    dx = da @ W_ih  # (B, C_in)
    dh_prev = da @ W_hh  # (B, H)
    dW_ih = da.T @ x  # (4H, C_in)
    dW_hh = da.T @ h_prev  # (4H, H)
    db = da.sum(axis=0)  # (4H,): b_ih and b_hh enter a the same way
    return dx, dh_prev, dc_prev, dW_ih, dW_hh, db, db.copy()


# ---------------------------------------------------------------------------------------------
# One layer over a whole sequence (time-major).


def lstm_layer_forward(x: np.ndarray, h0: np.ndarray, c0: np.ndarray, W_ih: np.ndarray,
                       W_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray
                       ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Any]:
    """Run one LSTM layer over x (T, B, C_in) from h0, c0 (B, H).

    Returns y (T, B, H) (every h_t), the final (h_T, c_T) (B, H) each, and a cache.
    """
    T, B, _ = x.shape
    H = W_hh.shape[1]
    # a_x = W_ih x_t + b_ih + b_hh for every t at once (one matrix product, outside the loop)
    ax, c_in = linear_forward(x, W_ih, b_ih)  # (T, B, 4H)
    ax += b_hh
    gates = np.empty((T, B, 4 * H), dtype=ax.dtype)  # [i, f, g, o] after the nonlinearities
    hs = np.empty((T + 1, B, H), dtype=ax.dtype)  # hs[t + 1] = h_t, hs[0] = h0
    cs = np.empty((T + 1, B, H), dtype=ax.dtype)  # cs[t + 1] = c_t, cs[0] = c0
    tanh_cs = np.empty((T, B, H), dtype=ax.dtype)
    hs[0], cs[0] = h0, c0
    W_hh_T = np.ascontiguousarray(W_hh.T)  # (H, 4H), made once for all T steps
    for t in range(T):
        hs[t + 1], cs[t + 1], tanh_cs[t] = _step_forward(ax[t], hs[t], cs[t], W_hh_T, gates[t])
    y = hs[1:]  # (T, B, H)
    return y, (hs[T].copy(), cs[T].copy()), (c_in, W_hh, gates, hs, cs, tanh_cs)


def lstm_layer_backward(dy: np.ndarray, cache: Any, dh_T: np.ndarray | None = None,
                        dc_T: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Back-propagation through time for ``lstm_layer_forward``.

    dy (T, B, H) = dL/dh_t from above (the layer's outputs); dh_T, dc_T (B, H) = dL/d(final
    state) (zeros if None). Returns (dx (T, B, C_in), dW_ih, dW_hh, db_ih, db_hh, dh0, dc0).
    """
    c_in, W_hh, gates, hs, cs, tanh_cs = cache
    T, B, H = dy.shape
    da = np.empty_like(gates)  # (T, B, 4H): dL/da_t for every step
    dh_next = np.zeros((B, H), dtype=dy.dtype) if dh_T is None else dh_T  # dL/dh_t via step t+1
    dc_next = np.zeros((B, H), dtype=dy.dtype) if dc_T is None else dc_T  # dL/dc_t via step t+1
    for t in reversed(range(T)):
        # h_t feeds the layer above (dy[t]) and the next step (dh_next)
        dh = dy[t] + dh_next
        da[t], dc_next = _step_backward(dh, dc_next, gates[t], cs[t], tanh_cs[t])
        # a_t = ... + W_hh h_{t-1}:  dL/dh_{t-1} = da_t W_hh
        dh_next = da[t] @ W_hh  # (B, H)
    da2 = da.reshape(T * B, 4 * H)  # (T*B, 4H)
    # dW_hh = sum_t da_t^T h_{t-1}
    dW_hh = da2.T @ hs[:T].reshape(T * B, H)  # (4H, H)
    # a_x = W_ih x + b_ih (+ b_hh): dx, dW_ih, db_ih in one product each
    dx, dW_ih, db_ih = linear_backward(da, c_in)  # (T, B, C_in), (4H, C_in), (4H,)
    db_hh = db_ih.copy()  # b_hh enters a exactly as b_ih does
    return dx, dW_ih, dW_hh, db_ih, db_hh, dh_next, dc_next


# ---------------------------------------------------------------------------------------------
# A stack of layers, params keyed like torch.nn.LSTM ("weight_ih_l0", ...).


def lstm_forward(x: np.ndarray, p: Mapping[str, np.ndarray], n_layer: int,
                 state: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Any]:
    """Multi-layer LSTM, ``torch.nn.LSTM`` (batch_first=False) semantics, without dropout.

    x (T, B, C_in); p the weights keyed ``weight_ih_l{k}``, ``weight_hh_l{k}``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}``; state (h0, c0) each (n_layer, B, H) or None (zeros).
    Returns y (T, B, H) (the top layer's h_t), (h_n, c_n) each (n_layer, B, H), and a cache.
    """
    T, B, _ = x.shape
    H = p["weight_hh_l0"].shape[1]
    if state is None:
        h0 = c0 = np.zeros((n_layer, B, H), dtype=x.dtype)
    else:
        h0, c0 = state
    h_n = np.empty((n_layer, B, H), dtype=x.dtype)
    c_n = np.empty((n_layer, B, H), dtype=x.dtype)
    caches = []
    for k in range(n_layer):
        x, (h_n[k], c_n[k]), c = lstm_layer_forward(
            x, h0[k], c0[k], p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"], p[f"bias_ih_l{k}"],
            p[f"bias_hh_l{k}"])  # (T, B, H)
        caches.append(c)
    return x, (h_n, c_n), caches


def lstm_backward(dy: np.ndarray, cache: Any,
                  dstate: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Gradients of ``lstm_forward``: dy (T, B, H) = dL/dy, dstate = dL/d(h_n, c_n) or None.

    Returns dx (T, B, C_in), grads keyed like ``p``, and (dh0, dc0) each (n_layer, B, H).
    """
    n_layer = len(cache)
    grads: dict[str, np.ndarray] = {}
    dh0, dc0 = [], []
    for k in reversed(range(n_layer)):
        dh_T = None if dstate is None else dstate[0][k]
        dc_T = None if dstate is None else dstate[1][k]
        dy, dW_ih, dW_hh, db_ih, db_hh, dh, dc = lstm_layer_backward(dy, cache[k], dh_T, dc_T)
        grads[f"weight_ih_l{k}"], grads[f"weight_hh_l{k}"] = dW_ih, dW_hh
        grads[f"bias_ih_l{k}"], grads[f"bias_hh_l{k}"] = db_ih, db_hh
        dh0.append(dh)
        dc0.append(dc)
    return dy, grads, (np.stack(dh0[::-1]), np.stack(dc0[::-1]))


# ---------------------------------------------------------------------------------------------
# The language model.


def param_shapes(config: LSTMConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the canonical (initialisation) order."""
    V, E, H = config.vocab_size, config.d_embed, config.d_hidden
    shapes: dict[str, tuple[int, ...]] = {"emb.weight": (V, E)}
    for k in range(config.n_layer):
        c_in = E if k == 0 else H
        shapes[f"lstm.weight_ih_l{k}"] = (4 * H, c_in)
        shapes[f"lstm.weight_hh_l{k}"] = (4 * H, H)
        shapes[f"lstm.bias_ih_l{k}"] = (4 * H,)
        shapes[f"lstm.bias_hh_l{k}"] = (4 * H,)
    if not config.tie_weights:
        shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    return shapes


def init_params(config: LSTMConfig, seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial weights from ``np.random.default_rng(seed)`` (see the module docstring).

    The PyTorch twin loads exactly these arrays, so one seed gives one set of weights.
    """
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(config.d_hidden)
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if name.startswith("lstm."):
            p = rng.uniform(-k, k, size=shape)
        elif name == "head.bias":
            p = np.zeros(shape)
        else:  # emb.weight, head.weight
            p = rng.uniform(-EMB_INIT, EMB_INIT, size=shape)
        params[name] = np.ascontiguousarray(p, dtype=dtype)
    return params


def _check_idx(idx: Any, vocab_size: int, name: str = "idx") -> np.ndarray:
    """idx as an integer array (B, T), or a ValueError naming what is wrong with it."""
    idx = np.asarray(idx)
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {idx.dtype}")
    if idx.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T), got shape {idx.shape}")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {idx.shape}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name}: token ids must be in [0, {vocab_size}), got min {lo}, max {hi}")
    return idx


class LSTMLM:
    """Multi-layer LSTM language model (NumPy reference, forward and hand-written BPTT).

    Args:
        config: the model's shape; ``config.dropout`` is ignored (no dropout in NumPy).
        seed: seeds ``np.random.default_rng`` for the initialisation.
        dtype: float32 (default) or float64; parameters, activations and gradients use it.
    """

    def __init__(self, config: LSTMConfig, seed: int = 0, dtype: Any = np.float32) -> None:
        if not isinstance(config, LSTMConfig):
            raise ValueError(f"config must be an LSTMConfig, got {type(config).__name__}")
        dtype = param_dtype(dtype)
        self.config = config
        self.dtype = dtype
        self.params: dict[str, np.ndarray] = init_params(config, seed, dtype)

    # -- parameters -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, keyed like ``params`` (and the PyTorch twin)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copy NumPy arrays or torch tensors into the parameters (cast to the model's dtype).

        Raises ValueError naming missing keys, unexpected keys and shape mismatches; nothing
        is changed then. The arrays in ``params`` stay the same objects (optimisers hold them).
        """
        arrays = {k: to_numpy(v) for k, v in state_dict.items()}  # torch tensors too, half precision widened exactly
        check_state_dict({k: v.shape for k, v in self.params.items()}, {k: v.shape for k, v in arrays.items()})
        for k, v in arrays.items():
            self.params[k][...] = v

    def num_params(self) -> int:
        """Number of scalar parameters (a tied head counted once)."""
        return sum(p.size for p in self.params.values())

    # -- state ----------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The zero state (h, c), each (n_layer, B, H)."""
        shape = (self.config.n_layer, int(batch_size), self.config.d_hidden)
        return np.zeros(shape, dtype=self.dtype), np.zeros(shape, dtype=self.dtype)

    def _check_state(self, state: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray] | None:
        if state is None:
            return None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"state must be a tuple (h, c), got {type(state).__name__}"
                             f"{'' if not isinstance(state, (tuple, list)) else f' of length {len(state)}'}")
        expected = (self.config.n_layer, batch_size, self.config.d_hidden)
        out = []
        for name, s in zip("hc", state):
            s = to_numpy(s)
            if s.shape != expected:
                raise ValueError(f"state {name} must have shape (n_layer, B, d_hidden) = {expected}, "
                                 f"got {s.shape}")
            out.append(np.ascontiguousarray(s, dtype=self.dtype))
        return out[0], out[1]

    # -- forward --------------------------------------------------------------------------

    def _lstm_params(self) -> dict[str, np.ndarray]:
        return {k[5:]: v for k, v in self.params.items() if k.startswith("lstm.")}

    def _head_weight(self) -> np.ndarray:
        return self.params["emb.weight" if self.config.tie_weights else "head.weight"]

    def _forward(self, idx: np.ndarray, state: tuple[np.ndarray, np.ndarray] | None
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Any]:
        """Time-major logits (T, B, V), the final state and the caches, for checked inputs."""
        P = self.params
        x, c_emb = embedding_forward(idx.T, P["emb.weight"])  # (T, B, E)
        y, new_state, c_lstm = lstm_forward(x, self._lstm_params(), self.config.n_layer, state)  # (T, B, H)
        # logits_t = h_t W_head^T + b_head
        logits, c_head = linear_forward(y, self._head_weight(), P["head.bias"])  # (T, B, V)
        return logits, new_state, (c_emb, c_lstm, c_head)

    def forward(self, idx: Any, state: Any = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Next-token logits (B, T, V) for idx (B, T) ints, and the state after the last token.

        ``state`` (h, c), each (n_layer, B, H), is the state before the first token (None:
        zeros); the returned state continues from there (carry it to the next window).
        """
        idx = _check_idx(idx, self.config.vocab_size)
        state = self._check_state(state, idx.shape[0])
        logits, new_state, _ = self._forward(idx, state)  # (T, B, V)
        return np.ascontiguousarray(logits.transpose(1, 0, 2)), new_state  # (B, T, V)

    __call__ = forward

    # -- loss and backward ----------------------------------------------------------------

    def loss(self, idx: Any, targets: Any, state: Any = None, ignore_index: int = -100) -> float:
        """Mean cross-entropy (nats) of the next-token predictions, without gradients."""
        idx = _check_idx(idx, self.config.vocab_size)
        targets = check_targets(targets, idx.shape, self.config.vocab_size, ignore_index)
        logits, _, _ = self._forward(idx, self._check_state(state, idx.shape[0]))
        loss, _ = cross_entropy_forward(logits, targets.T, ignore_index)
        return loss

    def loss_and_grads(self, idx: Any, targets: Any, state: Any = None, ignore_index: int = -100,
                       return_state: bool = False
                       ) -> tuple[float, dict[str, np.ndarray]] | tuple[
                           float, dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Mean cross-entropy of logits(idx, state) against targets (B, T), and its gradient.

        Returns ``(loss, grads)``, or ``(loss, grads, new_state)`` with ``return_state=True``
        (the state after the last token, to carry into the next window: truncated BPTT). The
        carried-in ``state`` is a constant here: no gradient flows into it. ``grads`` is keyed
        like ``params``; with tied weights ``grads["emb.weight"]`` is the sum of the
        embedding's and the head's gradients. Targets equal to ``ignore_index`` are not counted.
        """
        idx = _check_idx(idx, self.config.vocab_size)
        targets = check_targets(targets, idx.shape, self.config.vocab_size, ignore_index)
        state = self._check_state(state, idx.shape[0])
        logits, new_state, (c_emb, c_lstm, c_head) = self._forward(idx, state)  # (T, B, V)
        # the loss is a mean over all counted positions: time-major order changes nothing
        loss, c_ce = cross_entropy_forward(logits, targets.T, ignore_index)

        grads: dict[str, np.ndarray] = {}
        dlogits = cross_entropy_backward(c_ce)  # (T, B, V)
        dy, dW_head, grads["head.bias"] = linear_backward(dlogits, c_head)  # (T, B, H), (V, H), (V,)
        dx, g_lstm, _ = lstm_backward(dy, c_lstm)  # (T, B, E)
        grads.update({"lstm." + k: v for k, v in g_lstm.items()})
        demb = embedding_backward(dx, c_emb)  # (V, E)
        if self.config.tie_weights:
            # one matrix, two uses: its gradient is the sum of both
            demb += dW_head
        else:
            grads["head.weight"] = dW_head
        grads["emb.weight"] = demb
        grads = {k: grads[k] for k in self.params}
        if return_state:
            return loss, grads, new_state
        return loss, grads
