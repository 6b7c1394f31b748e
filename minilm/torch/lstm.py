"""A multi-layer LSTM language model in PyTorch: the twin of ``minilm.numpy.lstm``.

The same equations, gate order (i, f, g, o, torch's: ``minilm.numpy.lstm.GATES``, split
with its ``gate_slices`` here too), parameter names and shapes as the NumPy model; autograd
supplies the backward (back-propagation through time)::

    a   = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh            # (B, 4H), [i, f, g, o] blocks
    i_t, f_t, o_t = sigma(a_i), sigma(a_f), sigma(a_o);  g_t = tanh(a_g)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

    emb.weight (V, d_embed)
    lstm.weight_ih_l{k} (4H, C_in)   lstm.weight_hh_l{k} (4H, H)
    lstm.bias_ih_l{k} (4H,)          lstm.bias_hh_l{k} (4H,)          k = 0 .. n_layer - 1
    head.weight (V, H)               only when config.tie_weights is False
    head.bias (V,)

``LSTMLM(config, seed)`` starts from ``minilm.numpy.lstm.init_params(config, seed)``, so one
seed gives the same weights in both twins, and building a model draws nothing from torch's
global random generator.

Two implementations of the recurrence, with the same parameter names:

- ``fused=False`` (default): ``LSTM`` below, an explicit cell and time loop that reads as the
  translation of the NumPy code;
- ``fused=True``: ``torch.nn.LSTM`` (its own kernels), whose parameters have exactly these
  names and shapes. The tests check the two against each other.

State: ``(h, c)``, each ``(n_layer, B, H)``, as ``torch.nn.LSTM``. ``forward`` returns the state
still attached to the autograd graph (as ``torch.nn.LSTM`` does): detach it before carrying
it into the next window (truncated back-propagation through time).

Dropout: in training mode, ``config.dropout`` is applied to the output of every layer except
the last (``torch.nn.LSTM``'s ``dropout``), in both implementations; the NumPy model has none,
so compare the twins in ``eval()`` mode or with dropout 0. Time-major ``(T, B, C)`` inside,
batch-first ``(B, T)`` / ``(B, T, V)`` outside, as in NumPy.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minilm.config import LSTMConfig
from minilm.numpy.lstm import gate_slices, init_params
from minilm.torch.layers import Embedding, check_targets, to_tensor
from minilm.state_dicts import check_state_dict

__all__ = ["LSTMLM", "LSTM", "lstm_cell"]


def lstm_cell(ax: torch.Tensor, h_prev: torch.Tensor, c_prev: torch.Tensor,
              W_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step given ax = W_ih x_t + b_ih + b_hh (B, 4H) and h_prev, c_prev (B, H) -> h, c (B, H)."""
    # a = (W_ih x_t + b_ih + b_hh) + W_hh h_{t-1}
    a = ax + h_prev @ W_hh.T  # (B, 4H)
    at = gate_slices(h_prev.shape[-1])
    a_i, a_f, a_g, a_o = a[..., at["i"]], a[..., at["f"]], a[..., at["g"]], a[..., at["o"]]  # (B, H) each
    # i, f, o = sigma(a_i), sigma(a_f), sigma(a_o);  g = tanh(a_g)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    # c_t = f_t * c_{t-1} + i_t * g_t
    c = f * c_prev + i * g  # (B, H)
    # h_t = o_t * tanh(c_t)
    h = o * torch.tanh(c)  # (B, H)
    return h, c


class LSTM(nn.Module):
    """Multi-layer LSTM with ``torch.nn.LSTM``'s parameter names, written as an explicit loop.

    forward(x (T, B, C_in), state (h0, c0) each (n_layer, B, H) or None)
    -> y (T, B, H), (h_n, c_n) each (n_layer, B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout = float(dropout)
        H = hidden_size
        for k in range(num_layers):
            c_in = input_size if k == 0 else H
            # parameters start uninitialised; the model fills them from the NumPy init
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * H, c_in)))  # (4H, C_in)
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(4 * H, H)))  # (4H, H)
            setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(4 * H)))  # (4H,)
            setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(4 * H)))  # (4H,)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        T, B, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        if state is None:
            zeros = x.new_zeros(L, B, H)
            state = (zeros, zeros)
        h0, c0 = state
        h_n, c_n = [], []
        for k in range(L):
            W_ih, W_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            b_ih, b_hh = getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")
            # a_x = W_ih x_t + b_ih + b_hh for every t at once (outside the time loop)
            ax = F.linear(x, W_ih, b_ih) + b_hh  # (T, B, 4H)
            h, c = h0[k], c0[k]  # (B, H)
            hs = []
            for t in range(T):
                h, c = lstm_cell(ax[t], h, c, W_hh)  # (B, H)
                hs.append(h)
            x = torch.stack(hs)  # (T, B, H)
            h_n.append(h)
            c_n.append(c)
            if k < L - 1 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
        return x, (torch.stack(h_n), torch.stack(c_n))


class LSTMLM(nn.Module):
    """Multi-layer LSTM language model, the twin of ``minilm.numpy.LSTMLM``.

    Args:
        config: the model's shape.
        seed: the NumPy initialisation's seed (``init_params(config, seed)``).
        fused: use ``torch.nn.LSTM`` for the recurrence instead of the explicit loop.
    """

    def __init__(self, config: LSTMConfig, seed: int = 0, fused: bool = False) -> None:
        super().__init__()
        if not isinstance(config, LSTMConfig):
            raise ValueError(f"config must be an LSTMConfig, got {type(config).__name__}")
        self.config = config
        self.fused = bool(fused)
        E, H, L, V = config.d_embed, config.d_hidden, config.n_layer, config.vocab_size
        self.emb = Embedding(V, E)
        if self.fused:
            # nn.LSTM initialises itself from torch's global generator: keep that untouched
            with torch.random.fork_rng(devices=[]):
                self.lstm = nn.LSTM(E, H, L, dropout=config.dropout if L > 1 else 0.0)
        else:
            self.lstm = LSTM(E, H, L, dropout=config.dropout)
        self.head = nn.Module()
        if not config.tie_weights:
            self.head.weight = nn.Parameter(torch.empty(V, H))  # (V, H)
        self.head.bias = nn.Parameter(torch.empty(V))  # (V,)
        self.load_state_dict(init_params(config, seed, np.float32))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load NumPy arrays or tensors (cast to each parameter's dtype and device).

        With ``strict`` (the default) raises ValueError naming missing keys, unexpected keys
        and shape mismatches before changing anything.
        """
        own = super().state_dict()
        tensors = {k: to_tensor(v) for k, v in state_dict.items()}
        check_state_dict({k: t.shape for k, t in own.items()}, {k: t.shape for k, t in tensors.items()}, strict)
        return super().load_state_dict(tensors, strict=strict, assign=assign)

    def _head_weight(self) -> torch.Tensor:
        return self.emb.weight if self.config.tie_weights else self.head.weight  # (V, H)

    def init_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero state (h, c), each (n_layer, B, H), on the model's device and dtype."""
        w = self.emb.weight
        shape = (self.config.n_layer, int(batch_size), self.config.d_hidden)
        return w.new_zeros(shape), w.new_zeros(shape)

    def _check_idx(self, idx: Any) -> torch.Tensor:
        idx = to_tensor(idx)
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got shape {tuple(idx.shape)}")
        if idx.numel() == 0:
            raise ValueError(f"idx must be non-empty, got shape {tuple(idx.shape)}")
        lo, hi = int(idx.min()), int(idx.max())
        V = self.config.vocab_size
        if lo < 0 or hi >= V:
            raise ValueError(f"idx: token ids must be in [0, {V}), got min {lo}, max {hi}")
        return idx.to(self.emb.weight.device, torch.long)

    def _check_state(self, state: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if state is None:
            return None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"state must be a tuple (h, c), got {type(state).__name__}")
        expected = (self.config.n_layer, batch_size, self.config.d_hidden)
        w = self.emb.weight
        out = []
        for name, s in zip("hc", state):
            s = to_tensor(s)
            if tuple(s.shape) != expected:
                raise ValueError(f"state {name} must have shape (n_layer, B, d_hidden) = {expected}, "
                                 f"got {tuple(s.shape)}")
            out.append(s.to(w.device, w.dtype))
        return out[0], out[1]

    def forward(self, idx: Any, state: Any = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Next-token logits (B, T, V) for idx (B, T) ints, and the state after the last token.

        ``state`` (h, c), each (n_layer, B, H), is the state before the first token (None:
        zeros). NumPy arrays are accepted for idx and state.
        """
        idx = self._check_idx(idx)
        state = self._check_state(state, idx.shape[0])
        x = self.emb(idx.T)  # (T, B, E)
        y, new_state = self.lstm(x, state)  # (T, B, H)
        # logits_t = h_t W_head^T + b_head
        logits = F.linear(y, self._head_weight(), self.head.bias)  # (T, B, V)
        return logits.transpose(0, 1), new_state  # (B, T, V)

    def loss(self, idx: Any, targets: Any, state: Any = None, ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy (nats) of the next-token predictions, differentiable."""
        logits, _ = self.forward(idx, state)  # (B, T, V)
        targets = check_targets(targets, logits.shape[:2], self.config.vocab_size, ignore_index,
                                logits.device)  # (B, T)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=ignore_index)
