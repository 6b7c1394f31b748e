"""Tests for minilm.numpy.layers (and its twin minilm.torch.layers).

Every hand-written backward is checked twice, independently: against central finite
differences (``check_grad``, float64) and against torch autograd of the torch twin or of
``torch.nn.functional``. Backward passes are exercised through a random projection of the
output, L = sum(y * w), whose gradient with respect to y is w.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minilm.config import TransformerConfig
from minilm.numpy import layers as L
from minilm.testing import assert_close, check_grad
from minilm.torch import layers as TL

ATOL, RTOL = 1e-9, 1e-7  # numpy float64 vs torch float64


def t64(x: np.ndarray, grad: bool = True) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def load_module(module: torch.nn.Module, p: dict[str, np.ndarray]) -> torch.nn.Module:
    module = module.double()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()})
    return module


def fd_check_all(forward, arrays: dict[str, np.ndarray], grads: dict[str, np.ndarray], w: np.ndarray) -> None:
    """Finite-difference check of every gradient in ``grads`` for L = sum(forward() * w)."""
    for name, g in grads.items():
        check_grad(lambda _: float((forward() * w).sum()), arrays[name], g, atol=1e-7, rtol=1e-5, name=name)


# ---------------------------------------------------------------------------------------------
# Embedding


def test_embedding_forward_backward(rng):
    W = rng.standard_normal((7, 5))
    idx = np.array([[1, 3, 1, 6], [0, 1, 6, 6]])  # repeated ids: their gradients must add up
    y, cache = L.embedding_forward(idx, W)
    w = rng.standard_normal(y.shape)
    dW = L.embedding_backward(w, cache)
    check_grad(lambda _: float((L.embedding_forward(idx, W)[0] * w).sum()), W, dW, name="dW")
    Wt = t64(W)
    yt = F.embedding(torch.as_tensor(idx), Wt)
    (yt * torch.as_tensor(w)).sum().backward()
    assert_close(y, yt, ATOL, RTOL, "y")
    assert_close(dW, Wt.grad, ATOL, RTOL, "dW")
    assert not dW[[2, 4, 5]].any(), "rows never looked up get no gradient"


def test_embedding_bad_ids(rng):
    W = rng.standard_normal((7, 5))
    with pytest.raises(ValueError, match=r"\[0, 7\).*max 7"):
        L.embedding_forward(np.array([[0, 7]]), W)
    with pytest.raises(ValueError, match="min -1"):
        L.embedding_forward(np.array([-1, 2]), W)


# ---------------------------------------------------------------------------------------------
# Linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3,), (2, 5, 3), (1, 1, 1, 3)])
def test_linear_forward_backward(rng, bias, shape):
    x = rng.standard_normal(shape)
    W = rng.standard_normal((4, 3))
    b = rng.standard_normal(4) if bias else None
    y, cache = L.linear_forward(x, W, b)
    assert y.shape == shape[:-1] + (4,)
    w = rng.standard_normal(y.shape)
    dx, dW, db = L.linear_backward(w, cache)
    f = lambda _: float((L.linear_forward(x, W, b)[0] * w).sum())  # noqa: E731
    check_grad(f, x, dx, name="dx")
    check_grad(f, W, dW, name="dW")
    xt, Wt = t64(x), t64(W)
    bt = t64(b) if bias else None
    yt = F.linear(xt, Wt, bt)
    (yt * torch.as_tensor(w)).sum().backward()
    assert_close(y, yt, ATOL, RTOL, "y")
    assert_close(dx, xt.grad, ATOL, RTOL, "dx")
    assert_close(dW, Wt.grad, ATOL, RTOL, "dW")
    if bias:
        check_grad(f, b, db, name="db")
        assert_close(db, bt.grad, ATOL, RTOL, "db")
    else:
        assert db is None


def test_linear_keeps_float32_and_checks_shapes(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    W = rng.standard_normal((4, 3)).astype(np.float32)
    y, cache = L.linear_forward(x, W, np.zeros(4, np.float32))
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in L.linear_backward(np.ones_like(y), cache))
    with pytest.raises(ValueError, match=r"5 features.*\(4, 3\)"):
        L.linear_forward(np.zeros((2, 5)), W)


# ---------------------------------------------------------------------------------------------
# LayerNorm and GELU


@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 1), (4, 16)])
def test_layer_norm_forward_backward(rng, shape):
    C = shape[-1]
    x = rng.standard_normal(shape) * 3 + 1
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y, cache = L.layer_norm_forward(x, w, b)
    g = rng.standard_normal(y.shape)
    dx, dw, db = L.layer_norm_backward(g, cache)
    f = lambda _: float((L.layer_norm_forward(x, w, b)[0] * g).sum())  # noqa: E731
    for name, arr, grad in (("dx", x, dx), ("dw", w, dw), ("db", b, db)):
        check_grad(f, arr, grad, atol=1e-7, name=name)
    xt, wt, bt = t64(x), t64(w), t64(b)
    yt = F.layer_norm(xt, (C,), wt, bt, eps=1e-5)
    (yt * torch.as_tensor(g)).sum().backward()
    assert_close(y, yt, ATOL, RTOL, "y")
    for name, grad, ref in (("dx", dx, xt.grad), ("dw", dw, wt.grad), ("db", db, bt.grad)):
        assert_close(grad, ref, ATOL, RTOL, name)


def test_gelu_forward_backward(rng):
    x = np.concatenate([rng.standard_normal(40) * 3, [0.0, -10.0, 10.0, 1e-4]])
    y, cache = L.gelu_forward(x)
    w = rng.standard_normal(y.shape)
    dx = L.gelu_backward(w, cache)
    check_grad(lambda _: float((L.gelu_forward(x)[0] * w).sum()), x, dx, name="dx")
    xt = t64(x)
    yt = F.gelu(xt, approximate="tanh")
    (yt * torch.as_tensor(w)).sum().backward()
    assert_close(y, yt, ATOL, RTOL, "y")
    assert_close(dx, xt.grad, ATOL, RTOL, "dx")
    # the tanh form, not the exact erf form: they differ by ~1e-4 around |x| ~ 2
    assert np.abs(y - F.gelu(torch.from_numpy(x)).numpy()).max() > 1e-5
    x32 = x.astype(np.float32)
    assert L.gelu_forward(x32)[0].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# MLP, attention, block: composite layers vs finite differences and the torch twin


def random_params(module: torch.nn.Module, rng: np.random.Generator, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random float64 arrays for every parameter of the torch twin, LayerNorm weights near 1."""
    p = {}
    for k, v in module.state_dict().items():
        a = rng.standard_normal(tuple(v.shape)) * scale
        if k.endswith("ln1.weight") or k.endswith("ln2.weight"):
            a += 1.0
        p[k] = a
    return p


def compare_with_twin(np_forward, np_backward, module, p, x, rng, fd=True, **kw):
    y, cache = np_forward(x, p, **kw)
    w = rng.standard_normal(y.shape)
    dx, grads = np_backward(w, cache)
    assert sorted(grads) == sorted(p)
    module = load_module(module, p)
    xt = t64(x)
    yt = module(xt)
    (yt * torch.as_tensor(w)).sum().backward()
    assert_close(y, yt, ATOL, RTOL, "y")
    assert_close(dx, xt.grad, ATOL, RTOL, "dx")
    named = dict(module.named_parameters())
    for k, g in grads.items():
        assert_close(g, named[k].grad, ATOL, RTOL, k)
    if fd:
        forward = lambda: np_forward(x, p, **kw)[0]  # noqa: E731
        fd_check_all(forward, {**p, "x": x}, {**grads, "x": dx}, w)


def test_mlp(rng):
    module = TL.MLP(6, 10)
    p = random_params(module, rng)
    compare_with_twin(L.mlp_forward, L.mlp_backward, module, p, rng.standard_normal((2, 3, 6)), rng)


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
@pytest.mark.parametrize(
    "H, Hkv, T",
    [(2, 2, 5), (4, 2, 7), (3, 1, 1), (6, 3, 4)],
    ids=["mha", "gqa", "mqa-len1", "gqa-3groups"],
)
def test_attention(rng, attention, H, Hkv, T):
    D = 3  # head dim not a power of two
    C = H * D
    module = TL.CausalSelfAttention(C, H, Hkv, attention)
    p = random_params(module, rng)
    x = rng.standard_normal((2, T, C))
    compare_with_twin(L.attention_forward, L.attention_backward, module, p, x, rng,
                      fd=attention == "naive", n_head=H, n_kv_head=Hkv)


def test_attention_is_causal(rng):
    """Changing the last position's input changes no output before it."""
    module = TL.CausalSelfAttention(8, 4, 2)
    p = random_params(module, rng)
    x = rng.standard_normal((1, 6, 8))
    y1, _ = L.attention_forward(x, p, 4, 2)
    x[0, -1] += 1.0
    y2, _ = L.attention_forward(x, p, 4, 2)
    assert_close(y1[:, :-1], y2[:, :-1], 0, 0, "earlier positions")
    assert np.abs(y1[:, -1] - y2[:, -1]).max() > 1e-3


def test_attention_kv_cache_matches_full(rng):
    """A prefill of 3 then steps of 2 and 1 through the cache give the full forward's outputs."""
    H, Hkv, D, T = 4, 2, 3, 6
    p = random_params(TL.CausalSelfAttention(H * D, H, Hkv), rng)
    x = rng.standard_normal((2, T, H * D))
    full, _ = L.attention_forward(x, p, H, Hkv)
    cache = L.KVCacheLayer(2, Hkv, 8, D, np.float64)
    parts = []
    for a, b in ((0, 3), (3, 5), (5, 6)):
        y, c = L.attention_forward(x[:, a:b], p, H, Hkv, kv_cache=cache)
        cache.length = b
        parts.append(y)
    assert_close(np.concatenate(parts, axis=1), full, 1e-12, 1e-10, "cached")
    with pytest.raises(ValueError, match="KV cache"):
        L.attention_backward(np.ones_like(y), c)


@pytest.mark.parametrize("n_kv_head", [2, 1])
def test_block(rng, n_kv_head):
    cfg = TransformerConfig(vocab_size=5, context_length=8, d_model=8, n_layer=1, n_head=2,
                            n_kv_head=n_kv_head, d_ff=12)
    module = TL.Block(cfg, attention="naive")
    p = random_params(module, rng)
    x = rng.standard_normal((2, 4, 8))
    compare_with_twin(L.block_forward, L.block_backward, module, p, x, rng, n_head=2, n_kv_head=n_kv_head)


def test_block_float32_stays_float32(rng):
    cfg = TransformerConfig(vocab_size=5, context_length=8, d_model=8, n_layer=1, n_head=2, n_kv_head=1)
    p = {k: v.astype(np.float32) for k, v in random_params(TL.Block(cfg), rng).items()}
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    y, cache = L.block_forward(x, p, 2, 1)
    dx, grads = L.block_backward(np.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}


# ---------------------------------------------------------------------------------------------
# Cross-entropy


def test_cross_entropy(rng):
    logits = rng.standard_normal((2, 5, 7)) * 3
    logits[0, 0, 2] = 1e4  # huge logits stay finite (log-sum-exp)
    targets = rng.integers(0, 7, (2, 5))
    targets[1, 2] = targets[0, 4] = -100
    loss, cache = L.cross_entropy_forward(logits, targets)
    dlogits = L.cross_entropy_backward(cache)
    lt = t64(logits)
    ref = F.cross_entropy(lt.reshape(-1, 7), torch.as_tensor(targets).reshape(-1), ignore_index=-100)
    ref.backward()
    assert_close(loss, ref, 1e-12, 1e-10, "loss")
    assert_close(dlogits, lt.grad, 1e-12, 1e-10, "dlogits")
    assert not dlogits[1, 2].any() and not dlogits[0, 4].any()
    logits[0, 0, 2] = 2.0  # finite differences need moderate logits
    loss, cache = L.cross_entropy_forward(logits, targets)
    check_grad(lambda _: L.cross_entropy_forward(logits, targets)[0], logits,
               L.cross_entropy_backward(cache), name="dlogits")


def test_cross_entropy_bad_targets(rng):
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[4\]"):
        L.cross_entropy_forward(np.zeros((1, 2, 4)), np.array([[0, 4]]))
    loss, cache = L.cross_entropy_forward(np.zeros((1, 2, 4)), np.array([[-100, -100]]))
    assert loss == 0.0 and not L.cross_entropy_backward(cache).any()


# ---------------------------------------------------------------------------------------------
# Input helpers of the models


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_check_targets_twins(framework):
    """The NumPy and PyTorch target checks accept and refuse the same things, with one message."""
    check = L.check_targets if framework == "numpy" else TL.check_targets
    good = np.array([[0, 4, -100], [1, 2, 3]])
    out = check(good, (2, 3), vocab_size=5)
    assert np.asarray(out).tolist() == good.tolist()
    if framework == "torch":
        assert out.dtype == torch.long
        assert check(good.astype(np.int32), (2, 3), 5).dtype == torch.long
    # a custom ignore_index is let through; -100 then is an out-of-range target
    custom = np.where(good == -100, -7, good)
    assert np.asarray(check(custom, (2, 3), 5, ignore_index=-7)).tolist() == custom.tolist()
    with pytest.raises(ValueError, match=r"targets must be in \[0, 5\) or ignore_index=-1, got \[-100\]"):
        check(good, (2, 3), 5, ignore_index=-1)
    with pytest.raises(ValueError, match=r"\[0, 5\) or ignore_index=-100, got \[5, 9\]"):
        check(np.array([[5, 0, 9]]), (1, 3), 5)
    with pytest.raises(ValueError, match="integer token ids, got dtype .*float"):
        check(good.astype(np.float32), (2, 3), 5)
    with pytest.raises(ValueError, match="integer token ids, got dtype .*bool"):
        check(good > 0, (2, 3), 5)
    with pytest.raises(ValueError, match=r"targets shape \(2, 2\) must equal idx shape \(2, 3\)"):
        check(good[:, :2], (2, 3), 5)


@pytest.mark.parametrize("dtype, np_dtype", [(torch.bfloat16, np.float32), (torch.float16, np.float32),
                                             (torch.float32, np.float32), (torch.float64, np.float64),
                                             (torch.int64, np.int64)])
def test_to_numpy_widens_half_precision(dtype, np_dtype):
    """Tensors of every dtype (bfloat16 has no NumPy twin) come back with their exact values."""
    x = torch.tensor([[1.0, -2.5], [3.140625, 1e-3]], requires_grad=True).to(dtype)
    if dtype == torch.int64:
        x = x.detach()
    a = L.to_numpy(x)
    assert isinstance(a, np.ndarray) and a.shape == (2, 2) and a.dtype == np_dtype
    # widening is exact: the very values of the tensor, bfloat16's rounding of 1e-3 included
    assert torch.equal(torch.from_numpy(a), x.detach().to(torch.from_numpy(a).dtype))
    assert np.array_equal(L.to_numpy([[1, 2]]), np.array([[1, 2]]))


# ---------------------------------------------------------------------------------------------
# Post-LN block, bidirectional attention and the key padding mask (the encoder's layers)


@pytest.mark.parametrize("n_kv_head", [2, 1])
def test_post_ln_block(rng, n_kv_head):
    cfg = TransformerConfig(vocab_size=5, context_length=8, d_model=8, n_layer=1, n_head=2,
                            n_kv_head=n_kv_head, d_ff=12, norm="post")
    module = TL.Block(cfg, attention="naive")
    p = random_params(module, rng)
    x = rng.standard_normal((2, 4, 8))
    compare_with_twin(L.block_forward, L.block_backward, module, p, x, rng, n_head=2,
                      n_kv_head=n_kv_head, norm="post")
    # post-LN output is LayerNorm'd: with ln2 weight 1 and bias 0 each row has mean 0, var 1
    p["ln2.weight"][:] = 1.0
    p["ln2.bias"][:] = 0.0
    y, _ = L.block_forward(x, p, 2, n_kv_head, norm="post")
    assert_close(y.mean(-1), np.zeros((2, 4)), 1e-12, 0, "row mean")
    assert_close(y.var(-1), np.full((2, 4), 1.0), 1e-4, 0, "row var")  # eps=1e-5 in the LN
    pre, _ = L.block_forward(x, p, 2, n_kv_head, norm="pre")
    assert np.abs(pre - y).max() > 0.1, "pre and post must differ"


def test_block_bad_norm(rng):
    cfg = TransformerConfig(vocab_size=5, context_length=8, d_model=8, n_layer=1, n_head=2)
    p = random_params(TL.Block(cfg), rng)
    with pytest.raises(ValueError, match="norm"):
        L.block_forward(rng.standard_normal((1, 2, 8)), p, 2, 2, norm="middle")


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("attention", ["naive", "sdpa", "triton"])
def test_block_padding_mask(rng, norm, is_causal, attention):
    """Bidirectional (or causal) attention with a key padding mask, NumPy vs torch float64,
    every gradient, and finite differences for the NumPy backward (once per norm)."""
    if attention == "triton":
        pytest.importorskip("triton")
    H, Hkv, T, C = 4, 2, 5, 12
    cfg = TransformerConfig(vocab_size=5, context_length=8, d_model=C, n_layer=1, n_head=H,
                            n_kv_head=Hkv, d_ff=10, norm=norm)
    module = TL.Block(cfg, attention=attention, is_causal=is_causal)
    p = random_params(module, rng)
    module = load_module(module, p)
    x = rng.standard_normal((3, T, C))
    keep = np.ones((3, T), dtype=bool)
    keep[1, 3:] = False  # two padded positions
    keep[2, 1:] = False  # only the first token real
    kw = dict(norm=norm, is_causal=is_causal, key_padding_mask=keep)
    y, cache = L.block_forward(x, p, H, Hkv, **kw)
    w = rng.standard_normal(y.shape)
    dx, grads = L.block_backward(w, cache)
    xt = t64(x)
    yt = module(xt, key_padding_mask=torch.as_tensor(keep))
    (yt * torch.as_tensor(w)).sum().backward()
    assert_close(y, yt, ATOL, RTOL, "y")
    assert_close(dx, xt.grad, ATOL, RTOL, "dx")
    for k, prm in module.named_parameters():
        assert_close(grads[k], prm.grad, ATOL, RTOL, k)
    # perturbing the padded inputs changes no real position's output
    x2 = x.copy()
    x2[~keep] += rng.standard_normal((int((~keep).sum()), C))
    y2, _ = L.block_forward(x2, p, H, Hkv, **kw)
    assert_close(y2[keep], y[keep], 1e-12, 0, "real rows")
    assert np.abs(y2[~keep] - y[~keep]).max() > 1e-3
    if not is_causal:
        # bidirectional: the first position sees the later ones
        x3 = x.copy()
        x3[0, -1] += rng.standard_normal(C)  # (a constant shift would vanish in the LayerNorm)
        assert np.abs(L.block_forward(x3, p, H, Hkv, **kw)[0][0, 0] - y[0, 0]).max() > 1e-6
    if attention == "naive" and is_causal is False:
        forward = lambda: L.block_forward(x, p, H, Hkv, **kw)[0]  # noqa: E731
        fd_check_all(forward, {**p, "x": x}, {**grads, "x": dx}, w)
