"""The layers of a language model in NumPy, each forward with its hand-written backward beside it.

Every layer is a pair of plain functions (micrograd style: the backward sits right after its
forward, and reads as the chain rule of the line above it)::

    y, cache = <layer>_forward(x, <parameters>...)     # cache: what the backward needs
    dx, d<parameters>... = <layer>_backward(dy, cache)  # dy = dL/dy, same shape as y

The interface is stable (the LSTM of ``minilm.numpy.lstm`` builds on it):

| layer | forward | backward |
| --- | --- | --- |
| Embedding | ``embedding_forward(idx, W) -> (y, cache)``; idx (...) ints, W (V, C), y (..., C) | ``embedding_backward(dy, cache) -> dW`` (V, C) |
| Linear | ``linear_forward(x, W, b=None) -> (y, cache)``; x (..., C_in), W (C_out, C_in), b (C_out,), y (..., C_out) | ``linear_backward(dy, cache) -> (dx, dW, db)``; db is None when b is None |
| LayerNorm | ``layer_norm_forward(x, w, b, eps=1e-5)`` over the last axis | ``layer_norm_backward(dy, cache) -> (dx, dw, db)`` |
| GELU (tanh) | ``gelu_forward(x)`` | ``gelu_backward(dy, cache) -> dx`` |
| MLP | ``mlp_forward(x, p)``: Linear, GELU, Linear | ``mlp_backward(dy, cache) -> (dx, grads)`` |
| attention | ``attention_forward(x, p, n_head, n_kv_head, kv_cache=None, is_causal=True, key_padding_mask=None)`` grouped-query | ``attention_backward(dy, cache) -> (dx, grads)`` |
| block | ``block_forward(x, p, n_head, n_kv_head, kv_cache=None, norm="pre", is_causal=True, key_padding_mask=None)`` pre- or post-LayerNorm | ``block_backward(dy, cache) -> (dx, grads)`` |
| cross-entropy | ``cross_entropy_forward(logits, targets, ignore_index=-100) -> (loss, cache)`` | ``cross_entropy_backward(cache, dloss=1.0) -> dlogits`` |

Two input helpers shared by both NumPy models: ``check_targets(targets, shape, vocab_size,
ignore_index)`` (the checks the PyTorch twins make with ``minilm.torch.layers.check_targets``)
and ``to_numpy(x)``, which turns a torch tensor of any float dtype (bfloat16 included) into
an ndarray without importing torch.

Linear weights are stored torch-style, ``(out, in)``, so ``y = x @ W.T + b`` and a weight moves
to ``torch.nn.Linear`` unchanged. The composite layers (MLP, attention, block) take their
parameters as a dict ``p`` whose keys are the torch twin's ``state_dict`` keys relative to the
layer (``"fc.weight"``, ``"q_proj.bias"``, ``"attn.q_proj.weight"``, ``"ln1.weight"`` ...) and
their backward returns the gradients in a dict with the same keys.

Everything computes in the dtype of its inputs (float32 or float64): constants are Python
floats, which NumPy never lets promote an array. GELU is the tanh approximation of GPT-2
(``torch.nn.functional.gelu(x, approximate="tanh")``).

Deliberately left out: dropout (the NumPy models are the deterministic reference; the PyTorch
twin applies ``config.dropout`` in training mode), attention masks other than causal and key
padding, biases that can be switched off, fused kernels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minilm.numpy.attention import (
    merge_heads,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    split_heads,
)

__all__ = [
    "embedding_forward",
    "embedding_backward",
    "linear_forward",
    "linear_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "gelu_forward",
    "gelu_backward",
    "mlp_forward",
    "mlp_backward",
    "attention_forward",
    "attention_backward",
    "block_forward",
    "block_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "check_targets",
    "param_dtype",
    "to_numpy",
    "KVCacheLayer",
]


# ---------------------------------------------------------------------------------------------
# Embedding: a table look-up, y[n] = W[idx[n]]


def embedding_forward(idx: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, Any]:
    """Look rows of ``W`` up: idx (...) ints in [0, V), W (V, C) -> y (..., C).

    >>> y, _ = embedding_forward(np.array([[2, 0]]), np.arange(6.0).reshape(3, 2))
    >>> y.tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """
    V = W.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= V):
        raise ValueError(f"token ids must be in [0, {V}), got min {idx.min()}, max {idx.max()}")
    y = W[idx]  # (..., C)
    return y, (idx, W.shape)


def embedding_backward(dy: np.ndarray, cache: Any) -> np.ndarray:
    """dL/dW for ``embedding_forward``: each row of dy is added to the row it was read from.

    dy (..., C) -> dW (V, C). A token used twice gets the sum of both gradients.
    """
    idx, (V, C) = cache
    # dW[v] = sum over n with idx[n] == v of dy[n]   (scatter-add; np.add.at adds repeats)
    dW = np.zeros((V, C), dtype=dy.dtype)  # (V, C)
    np.add.at(dW, idx.reshape(-1), dy.reshape(-1, C))
    return dW


# ---------------------------------------------------------------------------------------------
# Linear: y = x W^T + b


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
    """Affine map: x (..., C_in), W (C_out, C_in), b (C_out,) or None -> y (..., C_out)."""
    if x.shape[-1] != W.shape[1]:
        raise ValueError(f"linear: x has {x.shape[-1]} features, W {W.shape} expects {W.shape[1]}")
    x2 = x.reshape(-1, x.shape[-1])  # (N, C_in)
    # y = x W^T + b
    y = x2 @ W.T  # (N, C_out)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], W.shape[0]), (x2, W, b is not None, x.shape)


def linear_backward(dy: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of ``linear_forward``: dy (..., C_out) -> dx (..., C_in), dW (C_out, C_in), db (C_out,)."""
    x2, W, has_bias, x_shape = cache
    dy2 = dy.reshape(-1, W.shape[0])  # (N, C_out)
    # dx = dy W
    dx = dy2 @ W  # (N, C_in)
    # dW = dy^T x   (summed over every row n)
    dW = dy2.T @ x2  # (C_out, C_in)
    # db = sum_n dy
    db = dy2.sum(axis=0) if has_bias else None  # (C_out,)
    return dx.reshape(x_shape), dW, db


# ---------------------------------------------------------------------------------------------
# LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * w + b


def layer_norm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, Any]:
    """Normalise each row of x (..., C) to mean 0, variance 1 (biased), then scale by w and shift by b."""
    # mu = mean_c x;  var = mean_c (x - mu)^2   (the biased variance, as torch)
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    # rstd = 1 / sqrt(var + eps);  x_hat = (x - mu) * rstd
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd  # (..., C)
    # y = x_hat * w + b
    y = xhat * w + b  # (..., C)
    return y, (xhat, rstd, w)


def layer_norm_backward(dy: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``layer_norm_forward``: dy (..., C) -> dx (..., C), dw (C,), db (C,)."""
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    dy2, xhat2 = dy.reshape(-1, C), xhat.reshape(-1, C)  # (N, C)
    # dw = sum_n dy * x_hat;  db = sum_n dy
    dw = (dy2 * xhat2).sum(axis=0)  # (C,)
    db = dy2.sum(axis=0)  # (C,)
    # dx = rstd * (g - mean_c g - x_hat * mean_c(g * x_hat)),  g = dy * w
    g = dy * w  # (..., C)
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# GELU, tanh approximation (GPT-2): y = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))

_GELU_K = math.sqrt(2.0 / math.pi)  # a Python float: keeps float32 arrays float32
_GELU_A = 0.044715


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, Any]:
    """y = x/2 * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3); any shape."""
    # u = sqrt(2/pi) * (x + 0.044715 x^3) = sqrt(2/pi) * x * (1 + 0.044715 x^2)   (in place)
    t = x * x
    t *= _GELU_A
    t += 1.0
    t *= x
    t *= _GELU_K
    np.tanh(t, out=t)  # t = tanh(u)
    # y = x/2 * (1 + tanh(u))
    y = t + 1.0
    y *= x
    y *= 0.5
    return y, (x, t)


def gelu_backward(dy: np.ndarray, cache: Any) -> np.ndarray:
    """dx = dy * dy/dx for ``gelu_forward``."""
    x, t = cache
    # dy/dx = (1 + t)/2 + x/2 * (1 - t^2) * du/dx,   du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 x^2)
    # (computed in place in two buffers: this elementwise chain costs as much as a matmul)
    dudx = x * x
    dudx *= 3.0 * _GELU_A * _GELU_K
    dudx += _GELU_K
    dydx = t * t
    np.subtract(1.0, dydx, out=dydx)  # 1 - t^2
    dydx *= x
    dydx *= dudx
    dydx *= 0.5  # x/2 * (1 - t^2) * du/dx
    np.multiply(t, 0.5, out=dudx)
    dydx += dudx
    dydx += 0.5  # + (1 + t)/2
    dydx *= dy
    return dydx


# ---------------------------------------------------------------------------------------------
# MLP: y = fc_2(gelu(fc_1(x))), params "fc.weight" (F, C), "fc.bias" (F,),
# "proj.weight" (C, F), "proj.bias" (C,)


def mlp_forward(x: np.ndarray, p: dict[str, np.ndarray]) -> tuple[np.ndarray, Any]:
    """Position-wise feed-forward network: x (B, T, C) -> (B, T, C) through a hidden width F."""
    h, c_fc = linear_forward(x, p["fc.weight"], p["fc.bias"])  # (B, T, F)
    a, c_gelu = gelu_forward(h)  # (B, T, F)
    y, c_proj = linear_forward(a, p["proj.weight"], p["proj.bias"])  # (B, T, C)
    return y, (c_fc, c_gelu, c_proj)


def mlp_backward(dy: np.ndarray, cache: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of ``mlp_forward``: dy (B, T, C) -> dx (B, T, C), grads keyed like ``p``."""
    c_fc, c_gelu, c_proj = cache
    g: dict[str, np.ndarray] = {}
    da, g["proj.weight"], g["proj.bias"] = linear_backward(dy, c_proj)  # (B, T, F)
    dh = gelu_backward(da, c_gelu)  # (B, T, F)
    dx, g["fc.weight"], g["fc.bias"] = linear_backward(dh, c_fc)  # (B, T, C)
    return dx, g


# ---------------------------------------------------------------------------------------------
# Causal multi-head self-attention with grouped-query heads (Hkv key/value heads, H >= Hkv
# query heads; query head h reads key/value head h // (H / Hkv)).
# params "q_proj.weight" (C, C), "k_proj.weight" (Hkv*D, C), "v_proj.weight" (Hkv*D, C),
# "o_proj.weight" (C, C), and a bias (out,) for each.


class KVCacheLayer:
    """One layer's key/value cache: preallocated k, v (B, Hkv, T_max, D); the first
    ``length`` positions are filled. The model's cache object owns one per layer and
    advances ``length`` once all layers have written (see ``minilm.numpy.transformer``).
    """

    def __init__(self, batch_size: int, n_kv_head: int, max_length: int, head_dim: int, dtype: Any) -> None:
        self.k = np.zeros((batch_size, n_kv_head, max_length, head_dim), dtype=dtype)  # (B, Hkv, T_max, D)
        self.v = np.zeros((batch_size, n_kv_head, max_length, head_dim), dtype=dtype)  # (B, Hkv, T_max, D)
        self.length = 0


def _repeat_kv(x: np.ndarray, n_rep: int) -> np.ndarray:
    """(B, Hkv, S, D) -> (B, Hkv*n_rep, S, D): each key/value head serves n_rep query heads."""
    return x if n_rep == 1 else np.repeat(x, n_rep, axis=1)  # (B, H, S, D)


def _sum_kv_grad(dx: np.ndarray, n_rep: int) -> np.ndarray:
    """Backward of ``_repeat_kv``: (B, H, S, D) -> (B, Hkv, S, D), summing each group's heads."""
    if n_rep == 1:
        return dx
    B, H, S, D = dx.shape
    return dx.reshape(B, H // n_rep, n_rep, S, D).sum(axis=2)  # (B, Hkv, S, D)


def attention_forward(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    n_head: int,
    n_kv_head: int,
    kv_cache: KVCacheLayer | None = None,
    is_causal: bool = True,
    key_padding_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    """Multi-head self-attention: x (B, T, C) -> (B, T, C); causal unless ``is_causal=False``.

    ``key_padding_mask`` (B, T) bool, True at real tokens and False at padding: no query
    attends to a padded key (the encoder's mask; a padded query still attends to the real
    keys, and its output is simply never read).

    With ``kv_cache`` the T new positions are ``kv_cache.length .. kv_cache.length + T - 1``:
    their keys/values are written into the cache and each new query attends to every cached
    key plus the causal part of the new block (bottom-right aligned causal mask). The cache's
    ``length`` is not advanced here. Only the forward pass runs with a cache (no backward).
    """
    B, T, C = x.shape
    n_rep = n_head // n_kv_head
    q, c_q = linear_forward(x, p["q_proj.weight"], p["q_proj.bias"])  # (B, T, C)
    k, c_k = linear_forward(x, p["k_proj.weight"], p["k_proj.bias"])  # (B, T, Hkv*D)
    v, c_v = linear_forward(x, p["v_proj.weight"], p["v_proj.bias"])  # (B, T, Hkv*D)
    q = split_heads(q, n_head)  # (B, H, T, D)
    k = split_heads(k, n_kv_head)  # (B, Hkv, T, D)
    v = split_heads(v, n_kv_head)  # (B, Hkv, T, D)
    if kv_cache is None:
        kk, vv = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)  # (B, H, T, D)
        # key j is visible to every query of its row when key_padding_mask[b, j] is True
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
        # out = softmax(q k^T / sqrt(D) + mask) v   (mask: causal and/or padding, -inf where not allowed)
        o = scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=is_causal)  # (B, H, T, D)
        ctx = (q, kk, vv, mask, is_causal)  # what the backward needs
    else:
        if not is_causal or key_padding_mask is not None:
            raise ValueError("attention_forward: a KV cache needs causal attention without a padding mask")
        t0 = kv_cache.length
        kv_cache.k[:, :, t0 : t0 + T] = k
        kv_cache.v[:, :, t0 : t0 + T] = v
        S = t0 + T
        kk = _repeat_kv(kv_cache.k[:, :, :S], n_rep)  # (B, H, S, D)
        vv = _repeat_kv(kv_cache.v[:, :, :S], n_rep)  # (B, H, S, D)
        # bottom-right causal: new query i sits at position t0 + i and sees keys j <= t0 + i
        mask = np.arange(S)[None, :] <= (t0 + np.arange(T))[:, None]  # (T, S)
        o = scaled_dot_product_attention(q, kk, vv, attn_mask=mask)  # (B, H, T, D)
        ctx = None  # inference only
    y, c_o = linear_forward(merge_heads(o), p["o_proj.weight"], p["o_proj.bias"])  # (B, T, C)
    return y, (c_q, c_k, c_v, c_o, ctx, n_head, n_kv_head)


def attention_backward(dy: np.ndarray, cache: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of ``attention_forward`` (without a KV cache): dy (B, T, C) -> dx (B, T, C), grads."""
    c_q, c_k, c_v, c_o, ctx, n_head, n_kv_head = cache
    if ctx is None:
        raise ValueError("attention_backward: the forward pass ran with a KV cache; no backward")
    q, kk, vv, mask, is_causal = ctx
    n_rep = n_head // n_kv_head
    g: dict[str, np.ndarray] = {}
    do, g["o_proj.weight"], g["o_proj.bias"] = linear_backward(dy, c_o)  # (B, T, C)
    do = split_heads(do, n_head)  # (B, H, T, D)
    dq, dkk, dvv = scaled_dot_product_attention_backward(
        do, q, kk, vv, attn_mask=mask, is_causal=is_causal)  # (B, H, T, D) each
    # a key/value head used by n_rep query heads gets the sum of their gradients
    dk = merge_heads(_sum_kv_grad(dkk, n_rep))  # (B, T, Hkv*D)
    dv = merge_heads(_sum_kv_grad(dvv, n_rep))  # (B, T, Hkv*D)
    dx, g["q_proj.weight"], g["q_proj.bias"] = linear_backward(merge_heads(dq), c_q)  # (B, T, C)
    dxk, g["k_proj.weight"], g["k_proj.bias"] = linear_backward(dk, c_k)  # (B, T, C)
    dxv, g["v_proj.weight"], g["v_proj.bias"] = linear_backward(dv, c_v)  # (B, T, C)
    # x feeds q, k and v: its gradient is the sum of the three
    dx += dxk
    dx += dxv
    return dx, g


# ---------------------------------------------------------------------------------------------
# Transformer block, two placements of the LayerNorms (``norm``):
#   "pre"  (GPT-2):                     x = x + attn(ln1(x));   x = x + mlp(ln2(x))
#   "post" (original Transformer, BERT): x = ln1(x + attn(x));   x = ln2(x + mlp(x))


def _sub(p: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of p under ``prefix`` ("attn.") with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in p.items() if k.startswith(prefix)}


def block_forward(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    n_head: int,
    n_kv_head: int,
    kv_cache: KVCacheLayer | None = None,
    norm: str = "pre",
    is_causal: bool = True,
    key_padding_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    """One block: x (B, T, C) -> (B, T, C). Params "ln1.*", "attn.*", "ln2.*", "mlp.*".

    ``norm`` is "pre" or "post" (see above); ``is_causal`` and ``key_padding_mask`` go to
    ``attention_forward``.
    """
    if norm == "pre":
        h, c_ln1 = layer_norm_forward(x, p["ln1.weight"], p["ln1.bias"])  # (B, T, C)
        a, c_attn = attention_forward(h, _sub(p, "attn."), n_head, n_kv_head, kv_cache,
                                      is_causal, key_padding_mask)  # (B, T, C)
        # x = x + attn(ln1(x))
        x = x + a
        h, c_ln2 = layer_norm_forward(x, p["ln2.weight"], p["ln2.bias"])  # (B, T, C)
        m, c_mlp = mlp_forward(h, _sub(p, "mlp."))  # (B, T, C)
        # x = x + mlp(ln2(x))
        x = x + m
    elif norm == "post":
        a, c_attn = attention_forward(x, _sub(p, "attn."), n_head, n_kv_head, kv_cache,
                                      is_causal, key_padding_mask)  # (B, T, C)
        # x = ln1(x + attn(x))
        x, c_ln1 = layer_norm_forward(x + a, p["ln1.weight"], p["ln1.bias"])  # (B, T, C)
        m, c_mlp = mlp_forward(x, _sub(p, "mlp."))  # (B, T, C)
        # x = ln2(x + mlp(x))
        x, c_ln2 = layer_norm_forward(x + m, p["ln2.weight"], p["ln2.bias"])  # (B, T, C)
    else:
        raise ValueError(f'block_forward: norm must be "pre" or "post", got {norm!r}')
    return x, (norm, c_ln1, c_attn, c_ln2, c_mlp)


def block_backward(dy: np.ndarray, cache: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gradients of ``block_forward``: dy (B, T, C) -> dx (B, T, C), grads keyed like ``p``."""
    norm, c_ln1, c_attn, c_ln2, c_mlp = cache
    g: dict[str, np.ndarray] = {}
    if norm == "pre":
        # the residual passes dy straight through; each branch adds its own contribution
        dh, g_mlp = mlp_backward(dy, c_mlp)  # (B, T, C)
        dx_branch, g["ln2.weight"], g["ln2.bias"] = layer_norm_backward(dh, c_ln2)  # (B, T, C)
        dx = dy + dx_branch
        dh, g_attn = attention_backward(dx, c_attn)  # (B, T, C)
        dx_branch, g["ln1.weight"], g["ln1.bias"] = layer_norm_backward(dh, c_ln1)  # (B, T, C)
        dx += dx_branch
    else:
        # y = ln2(s2), s2 = x1 + mlp(x1): ds2 reaches x1 twice, through the residual and the MLP
        ds2, g["ln2.weight"], g["ln2.bias"] = layer_norm_backward(dy, c_ln2)  # (B, T, C)
        dx1, g_mlp = mlp_backward(ds2, c_mlp)  # (B, T, C)
        dx1 += ds2
        # x1 = ln1(s1), s1 = x + attn(x): the same again
        ds1, g["ln1.weight"], g["ln1.bias"] = layer_norm_backward(dx1, c_ln1)  # (B, T, C)
        dx, g_attn = attention_backward(ds1, c_attn)  # (B, T, C)
        dx += ds1
    g.update({"attn." + k: v for k, v in g_attn.items()})
    g.update({"mlp." + k: v for k, v in g_mlp.items()})
    return dx, g


# ---------------------------------------------------------------------------------------------
# Cross-entropy: loss = mean over counted n of -log softmax(logits[n])[targets[n]]


def cross_entropy_forward(
    logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100
) -> tuple[float, Any]:
    """Mean negative log-likelihood in nats: logits (..., V), targets (...) ints.

    Targets equal to ``ignore_index`` are not counted; if none is counted the loss is 0.0
    (torch gives NaN there; 0.0 keeps training loops finite and its gradient is zero).
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,)
    if np.any((t[keep] < 0) | (t[keep] >= V)):
        bad = t[keep][(t[keep] < 0) | (t[keep] >= V)]
        raise ValueError(f"targets must be in [0, {V}) or ignore_index={ignore_index}, got {bad[:5].tolist()}")
    # log p = z - max - log sum exp(z - max)   (subtract the row max before exp: log-sum-exp)
    zs = z - z.max(axis=-1, keepdims=True)  # (N, V)
    e = np.exp(zs)  # (N, V)
    sum_e = e.sum(axis=-1, keepdims=True)  # (N, 1)
    tt = np.where(keep, t, 0)  # (N,)
    logp_t = zs[np.arange(len(t)), tt] - np.log(sum_e[:, 0])  # (N,)
    n = int(keep.sum())
    # loss = -1/n sum_{n counted} log p[n, t_n]
    loss = float(-(logp_t * keep).sum(dtype=np.float64) / max(n, 1))
    return loss, (e, sum_e, tt, keep, n, logits.shape)


def cross_entropy_backward(cache: Any, dloss: float = 1.0) -> np.ndarray:
    """dL/dlogits for ``cross_entropy_forward``: (..., V), zero on ignored positions."""
    e, sum_e, tt, keep, n, shape = cache
    # dlogits = (softmax(z) - onehot(t)) / n   on counted rows, 0 on ignored ones
    probs = e / sum_e  # (N, V)
    probs[np.arange(len(tt)), tt] -= 1.0
    probs *= (keep * (dloss / max(n, 1))).astype(probs.dtype)[:, None]
    return probs.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Input helpers of the models


def check_targets(targets: Any, shape: tuple[int, ...], vocab_size: int,
                  ignore_index: int = -100) -> np.ndarray:
    """targets as an integer array of ``shape`` (B, T), each in [0, V) or ``ignore_index``;
    otherwise a ValueError naming the dtype, the shapes or (up to five of) the bad values.

    >>> check_targets([[1, -100]], (1, 2), vocab_size=3).tolist()
    [[1, -100]]
    """
    targets = to_numpy(targets)
    if targets.dtype == np.bool_ or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    if targets.shape != tuple(shape):
        raise ValueError(f"targets shape {targets.shape} must equal idx shape {tuple(shape)}")
    bad = targets[(targets != ignore_index) & ((targets < 0) | (targets >= vocab_size))]  # (n_bad,)
    if bad.size:
        raise ValueError(f"targets must be in [0, {vocab_size}) or ignore_index={ignore_index}, "
                         f"got {bad[:5].tolist()}")
    return targets


def param_dtype(dtype: Any) -> np.dtype:
    """The parameter dtype of a NumPy model: float32 or float64, else ValueError."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def to_numpy(x: Any) -> np.ndarray:
    """An ndarray of x: NumPy arrays and lists as they are, torch tensors detached and on the
    CPU, without importing torch. float16 and bfloat16 tensors are widened to float32 first
    (exact: every half-precision value is a float32); NumPy has no bfloat16, so
    ``tensor.numpy()`` would refuse it."""
    if hasattr(x, "detach"):  # a torch.Tensor
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)
