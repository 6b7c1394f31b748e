"""Quantisation: the error bound on random and adversarial tensors, the int8 matmul, the
quantised Transformer, NumPy against PyTorch (float64), and the torch.ao dynamic peer.

Independent checks: the bound |w - deq(q(w))| <= s/2 is a theorem about the exact
arithmetic, checked here in float64 with the rounding slack stated in the module; the int32
accumulation is compared with Python's unbounded integers (``dtype=object``); the float error
of the int8 matmul with the bound derived in ``int8_matmul_error_bound``; the twins with
each other (same integers, same scales) and the quantised model with the float model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minilm.numpy.quantize as nq
import minilm.torch.quantize as tq
from minilm.config import TransformerConfig
from minilm.numpy.transformer import TransformerLM, init_params

GRANULARITIES = [
    dict(bits=8),
    dict(bits=8, per_channel=True),
    dict(bits=8, group_size=16),
    dict(bits=4, group_size=16),
    dict(bits=4, per_channel=True),
]


def _scale_per_element(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Each element's scale, broadcast to w's shape (the block layout of ``quantize``)."""
    if s.ndim == 0:
        return np.full(w.shape, float(s))
    R, G = s.shape
    return np.repeat(s.astype(np.float64), w[0].size // G, axis=1).reshape(w.shape)


def _check_bound(w: np.ndarray, q: np.ndarray, s: np.ndarray, bits: int) -> None:
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= qmax
    se = _scale_per_element(w, s)
    w64 = w.astype(np.float64)
    # the scale covers the block: max|w| <= Q s (stepped up where rounding left it short)
    assert np.all(np.abs(w64) <= qmax * se)
    deq64 = q.astype(np.float64) * se
    # |w - deq| <= s/2 in exact arithmetic; float64 division adds <= 2^-53 relative
    err = np.abs(w64 - deq64)
    assert np.all(err <= se / 2 * (1 + 1e-12) + 1e-300), float((err - se / 2).max())
    # and the dequantised array in w's own dtype: + the rounding of the product s q
    deq = nq.dequantize(q, s)
    assert deq.dtype == s.dtype
    eps = np.finfo(deq.dtype).eps
    tiny = np.finfo(deq.dtype).smallest_subnormal
    assert np.all(np.abs(w64 - deq.astype(np.float64)) <= se / 2 * (1 + 1e-12) + eps * np.abs(w64) + tiny)


@pytest.mark.parametrize("kw", GRANULARITIES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_bound_random(kw, dtype, rng):
    for scale in (1e-3, 1.0, 1e4):
        w = (rng.standard_normal((12, 32)) * scale).astype(dtype)
        q, s = nq.quantize(w, **kw)
        _check_bound(w, q, s, kw["bits"])


def _adversarial(dtype):
    rng = np.random.default_rng(5)
    base = rng.standard_normal((4, 32))
    outlier = base.copy()
    outlier[2, 7] = 1e6  # one huge outlier: per tensor, it crushes everything else to 0
    negzero = np.zeros((4, 32))
    negzero[:, ::2] = -0.0
    negzero[1] = base[1]
    tiny = np.finfo(dtype).smallest_subnormal
    denormal = base * np.finfo(dtype).tiny / 4  # every value subnormal
    one_denormal = np.zeros((4, 32))
    one_denormal[3, 3] = -tiny
    halves = np.tile(np.arange(-127, 128, 8) + 0.5, 1)[:32][None, :].repeat(4, 0)  # ties at .5
    huge = base / np.abs(base).max() * np.finfo(dtype).max / 2
    return {"zeros": np.zeros((4, 32)), "outlier": outlier, "negative zero": negzero,
            "denormals": denormal, "one denormal": one_denormal, "ties": halves, "huge": huge}


@pytest.mark.parametrize("kw", GRANULARITIES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(_adversarial(np.float64)))
def test_error_bound_adversarial(kw, dtype, case):
    w = _adversarial(dtype)[case].astype(dtype)
    q, s = nq.quantize(w, **kw)
    _check_bound(w, q, s, kw["bits"])
    qt, st = tq.quantize(torch.from_numpy(w), **kw)
    np.testing.assert_array_equal(qt.numpy(), q)
    np.testing.assert_array_equal(st.numpy(), s)
    if case == "zeros":
        assert np.all(s == 0) and np.all(q == 0) and np.all(nq.dequantize(q, s) == 0)


def test_outlier_per_tensor_vs_per_channel():
    """A 1e6 outlier in one row: per tensor every other weight rounds to 0 (s ~ 7874 > 2|w|);
    per channel only that row loses resolution."""
    w = np.random.default_rng(0).standard_normal((4, 32))
    w[2, 7] = 1e6
    q, s = nq.quantize(w)
    assert np.count_nonzero(q) == 1
    qc, sc = nq.quantize(w, per_channel=True)
    other = np.delete(np.arange(4), 2)
    assert np.abs(w[other] - nq.dequantize(qc, sc)[other]).max() < 0.02


def test_known_answer():
    """max|w| = 1.27 -> s = 0.01; 0.5 / 0.01 = 50; -1.27 -> -127; 0.005 / 0.01 = 0.5 -> 0
    (round half to even); 0.015 -> 1.5 -> 2."""
    q, s = nq.quantize(np.array([0.5, -1.27, 0.0, 0.005, 0.015]))
    assert float(s) == 1.27 / 127
    assert q.tolist() == [50, -127, 0, 0, 2]
    q4, s4 = nq.quantize(np.array([[0.7, -0.35, 0.1, 0.0]]), bits=4, per_channel=True)
    assert q4.tolist() == [[7, -4, 1, 0]] and np.isclose(s4[0, 0], 0.1)  # -3.5 -> -4 (even)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_rejected(bad):
    w = np.ones((2, 4))
    w[1, 2] = bad
    with pytest.raises(ValueError, match="finite"):
        nq.quantize(w)
    with pytest.raises(ValueError, match="finite"):
        tq.quantize(torch.from_numpy(w))


@pytest.mark.parametrize("mod", [nq, tq], ids=["numpy", "torch"])
def test_bad_arguments(mod):
    w = np.ones((4, 64), dtype=np.float32)
    if mod is tq:
        w = torch.from_numpy(w)
    for bits in (2, 16, 3, True, "8"):
        with pytest.raises(ValueError, match="unknown bit width"):
            mod.quantize(w, bits=bits)
    for g in (0, -32, 48, 2.5, True):
        with pytest.raises(ValueError, match="group_size"):
            mod.quantize(w, bits=4, group_size=g)
    with pytest.raises(ValueError, match="floating-point"):
        mod.quantize(w.int() if mod is tq else w.astype(np.int32))


@pytest.mark.parametrize("G", [32, 64, 128])
def test_int4_groups_and_packing(G, rng):
    w = rng.standard_normal((8, 256)).astype(np.float32)
    q, s = nq.quantize(w, bits=4, group_size=G)
    assert s.shape == (8, 256 // G) and q.min() >= -7 and q.max() <= 7
    _check_bound(w, q, s, 4)
    packed = nq.pack_int4(q)
    assert packed.dtype == np.uint8 and packed.shape == (8, 128)
    np.testing.assert_array_equal(nq.unpack_int4(packed), q)
    # smaller groups adapt the scale more locally: never a larger max error
    errs = [np.abs(w - nq.dequantize(*nq.quantize(w, bits=4, group_size=g))).max() for g in (256, G)]
    assert errs[1] <= errs[0]


def test_pack_int4_layout():
    """Byte i = low nibble q[2i] | high nibble q[2i+1] (4-bit two's complement)."""
    assert nq.pack_int4(np.array([1, 2, -1, -8])).tolist() == [0x21, 0x8F]
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        nq.pack_int4(np.array([8, 0]))


def test_int8_matmul_exact_integer_sum(rng):
    """The int32 accumulator equals the exact sum (Python ints) even with every product at
    the extremes (127 * 127 * K), and the scales are applied after."""
    K = 4096
    qx = np.full((2, K), 127, dtype=np.int8)
    qx[1] = -127
    qw = rng.integers(-127, 128, (3, K)).astype(np.int8)
    qw[0] = 127
    exact = qx.astype(object) @ qw.T.astype(object)  # unbounded integers
    one = np.ones((2, 1)), np.ones((3, 1))
    y = nq.int8_matmul(qx, one[0], qw, one[1])
    assert y.tolist() == exact.tolist()
    yt = tq.int8_matmul(torch.from_numpy(qx), torch.ones(2, 1, dtype=torch.float64),
                        torch.from_numpy(qw), torch.ones(3, 1, dtype=torch.float64))
    assert yt.tolist() == exact.tolist()
    with pytest.raises(ValueError, match="overflow"):
        nq.int8_matmul(np.zeros((1, 200_000), np.int8), 1.0, np.zeros((1, 200_000), np.int8), 1.0)


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_matmul_within_bound(per_channel, rng):
    x = rng.standard_normal((3, 5, 64)) * np.array([0.1, 1, 30])[:, None, None]  # tokens of many sizes
    w = rng.standard_normal((24, 64)) * 0.05
    b = rng.standard_normal(24)
    qx, sx = nq.quantize_activations(x)
    qw, sw = nq.quantize(w, per_channel=per_channel)
    y = nq.int8_matmul(qx, sx, qw, sw, b)
    ref = x @ w.T + b
    bound = nq.int8_matmul_error_bound(x, w, sx, sw)
    err = np.abs(y - ref)
    assert np.all(err <= bound * (1 + 1e-9) + 1e-12)
    assert err.max() > 0 and bound.max() < 0.1 * np.abs(ref).max()  # not vacuous
    # the PyTorch twin computes the same numbers
    yt = tq.int8_matmul(*tq.quantize_activations(torch.from_numpy(x)),
                        *tq.quantize(torch.from_numpy(w), per_channel=per_channel), torch.from_numpy(b))
    np.testing.assert_allclose(yt.numpy(), y, rtol=1e-13, atol=1e-13)


def test_broken_matmul_is_caught(rng):
    """A matmul that forgot one scale is far outside the bound (so the bound test can fail)."""
    x, w = rng.standard_normal((4, 64)), rng.standard_normal((8, 64))
    qx, sx = nq.quantize_activations(x)
    qw, sw = nq.quantize(w, per_channel=True)
    broken = nq.int8_matmul(qx, sx, qw, np.ones_like(sw))
    assert np.any(np.abs(broken - x @ w.T) > nq.int8_matmul_error_bound(x, w, sx, sw))


@pytest.mark.parametrize("kw", GRANULARITIES, ids=str)
def test_twins_agree(kw, rng):
    w = rng.standard_normal((16, 64))
    q, s = nq.quantize(w, **kw)
    qt, st = tq.quantize(torch.from_numpy(w), **kw)
    np.testing.assert_array_equal(qt.numpy(), q)
    np.testing.assert_array_equal(st.numpy(), s)
    np.testing.assert_array_equal(tq.dequantize(qt, st).numpy(), nq.dequantize(q, s))


def test_state_dict_round_trip_and_bytes():
    cfg = TransformerConfig(vocab_size=13, context_length=8, d_model=64, n_layer=2, n_head=2)
    p = init_params(cfg, 0)
    float_bytes = nq.state_dict_bytes(p)
    # the floor is bits/32 of the float bytes; scales and float vectors add a few percent
    for bits, kw, ratio in ((8, {}, 0.25), (4, dict(group_size=32), 0.125)):
        qs = nq.quantize_state_dict(p, bits=bits, per_channel=True, **kw)
        back = nq.dequantize_state_dict(qs)
        assert set(back) == set(p)
        for k in p:
            assert back[k].shape == p[k].shape and back[k].dtype == p[k].dtype
            if p[k].ndim == 1:
                np.testing.assert_array_equal(back[k], p[k])
        n_matrix = sum(v.size for v in p.values() if v.ndim == 2)
        n_vector = sum(v.size for v in p.values() if v.ndim == 1)
        n_scales = sum(v.size for k, v in qs.items() if k.endswith(".scale"))
        # real bytes: bits/8 per matrix entry, 4 per scale and per vector entry
        assert nq.state_dict_bytes(qs) == n_matrix * bits // 8 + 4 * (n_scales + n_vector)
        assert ratio < nq.state_dict_bytes(qs) / float_bytes < ratio + 0.06


def _tiny_config(**kw):
    return TransformerConfig(vocab_size=11, context_length=8, d_model=32, n_layer=2, n_head=4, **kw)


@pytest.mark.parametrize("activations", ["int8", None])
@pytest.mark.parametrize("cfg_kw", [{}, dict(n_kv_head=2, tie_weights=False)], ids=["tied", "gqa-untied"])
def test_quantized_model_twins(activations, cfg_kw, rng):
    cfg = _tiny_config(**cfg_kw)
    p = init_params(cfg, 3, np.float64)
    idx = rng.integers(0, cfg.vocab_size, (2, 8))
    a = nq.QuantizedTransformerLM(cfg, p, activations=activations, dtype=np.float64)(idx)
    b = tq.QuantizedTransformerLM(cfg, p, activations=activations, dtype=torch.float64,
                                  attention="naive")(torch.from_numpy(idx)).detach().numpy()
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    ref = TransformerLM(cfg, 3, np.float64)(idx)
    err = np.abs(a - ref).max()
    assert 0 < err < 0.02 * np.abs(ref).max() + 1e-3  # close to the float model, not equal


def test_quantized_model_weight_only_is_dequantised_float_model(rng):
    """Weight-only int8 = the float model run on the dequantised weights."""
    cfg = _tiny_config()
    p = init_params(cfg, 1, np.float64)
    idx = rng.integers(0, cfg.vocab_size, (2, 8))
    m = TransformerLM(cfg, 0, np.float64)
    m.load_state_dict(nq.dequantize_state_dict(nq.quantize_state_dict(p, 8, per_channel=True)))
    a = nq.QuantizedTransformerLM(cfg, p, activations=None, dtype=np.float64)(idx)
    np.testing.assert_allclose(a, m(idx), rtol=1e-12, atol=1e-12)


def test_quantized_torch_model_generates_with_cache(rng):
    from minilm.torch.generate import generate

    cfg = _tiny_config()
    p = init_params(cfg, 2)
    m = tq.QuantizedTransformerLM(cfg, p)
    idx = torch.from_numpy(rng.integers(0, cfg.vocab_size, (2, 3)))
    a = generate(m, idx, 5, temperature=0, use_cache=True)
    b = generate(m, idx, 5, temperature=0, use_cache=False)
    assert a.shape == (2, 8) and torch.equal(a, b)


def test_dynamic_peer(rng):
    """torch.ao dynamic quantisation replaces every block Linear and stays close."""
    import minilm.torch.transformer as tt

    cfg = _tiny_config()
    m = tt.TransformerLM(cfg, seed=0).eval()
    d = tq.dynamic_quantize(m)
    names = {type(mod).__name__ for mod in d.modules()}
    assert "DynamicQuantizedLinear" in names or any("quantized" in type(mod).__module__ for mod in d.modules())
    assert not any(isinstance(mod, torch.nn.Linear) and not "quantized" in type(mod).__module__
                   for mod in d.modules())
    idx = torch.from_numpy(rng.integers(0, cfg.vocab_size, (2, 8)))
    with torch.no_grad():
        err = (d(idx) - m(idx)).abs().max().item()
    assert 0 < err < 0.05


@pytest.mark.parametrize("bits, kw", [(8, {}), (4, dict(group_size=8))])
def test_lstm_weight_only_twins(bits, kw, rng):
    """The LSTM quantised weight-only (every matrix int8/int4, vectors float): both twins run
    the dequantised weights and agree; the logits stay near the float model's."""
    from minilm.config import LSTMConfig
    from minilm.numpy.lstm import LSTMLM
    from minilm.torch.lstm import LSTMLM as TorchLSTM

    cfg = LSTMConfig(vocab_size=11, d_embed=16, d_hidden=24, n_layer=2)
    ref = LSTMLM(cfg, seed=0, dtype=np.float64)
    qs = nq.quantize_state_dict(ref.state_dict(), bits, per_channel=True, **kw)
    assert any(k.endswith(f".int{bits}") for k in qs)
    deq = nq.dequantize_state_dict(qs)
    a = LSTMLM(cfg, seed=1, dtype=np.float64)
    a.load_state_dict(deq)
    b = TorchLSTM(cfg, seed=1).double()
    b.load_state_dict({k: torch.from_numpy(v) for k, v in deq.items()})
    idx = rng.integers(0, cfg.vocab_size, (2, 7))
    la, _ = a.forward(idx)
    lb, _ = b(torch.from_numpy(idx))
    np.testing.assert_allclose(lb.detach().numpy(), la, rtol=1e-10, atol=1e-12)
    lr, _ = ref.forward(idx)
    assert 0 < np.abs(la - lr).max() < (0.02 if bits == 8 else 0.2) * np.abs(lr).max()
