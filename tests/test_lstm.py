"""The LSTM: hand-written BPTT vs finite differences, the NumPy and PyTorch twins against each
other in float64, the explicit PyTorch loop against ``torch.nn.LSTM``, state carrying, state
dicts and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minilm.numpy.lstm as np_lstm
from minilm.config import LSTMConfig
from minilm.numpy.lstm import (
    GATES,
    LSTMLM,
    gate_slices,
    init_params,
    lstm_backward,
    lstm_cell_backward,
    lstm_cell_forward,
    lstm_forward,
    param_shapes,
    sigmoid,
)
from minilm.testing import assert_close, check_grad, numerical_grad
from minilm.torch.lstm import LSTMLM as TorchLSTMLM



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread avoids thread-pool stalls on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


F64 = dict(atol=1e-12, rtol=1e-9)  # float64 twins: the same arithmetic up to rounding


def _lstm_params(rng, n_layer, c_in, H):
    p = {}
    for k in range(n_layer):
        p[f"weight_ih_l{k}"] = rng.standard_normal((4 * H, c_in if k == 0 else H)) * 0.5
        p[f"weight_hh_l{k}"] = rng.standard_normal((4 * H, H)) * 0.5
        p[f"bias_ih_l{k}"] = rng.standard_normal(4 * H) * 0.5
        p[f"bias_hh_l{k}"] = rng.standard_normal(4 * H) * 0.5
    return p


def _tiny(tie=False, n_layer=2, V=7, E=4, H=4):
    return LSTMConfig(vocab_size=V, d_embed=E if not tie else H, d_hidden=H, n_layer=n_layer,
                      tie_weights=tie)


# --------------------------------------------------------------------------------------------
# The cell and the stack, against finite differences


def test_sigmoid_is_stable_and_exact():
    a = np.array([-1e4, -50.0, -1.0, 0.0, 2.0, 1e4])
    with np.errstate(all="raise"):  # no overflow warnings
        s = sigmoid(a)
    expected = np.array([0.0, np.exp(-50.0), 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2.0)), 1.0])
    assert_close(s, expected, atol=1e-16, rtol=1e-14)


def test_cell_forward_matches_torch_lstm_cell(rng):
    B, C, H = 3, 5, 4
    p = _lstm_params(rng, 1, C, H)
    x, h, c = rng.standard_normal((B, C)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    h1, c1, _ = lstm_cell_forward(x, h, c, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    cell = torch.nn.LSTMCell(C, H).double()
    cell.load_state_dict({k[:-3]: torch.tensor(v) for k, v in p.items()})
    th, tc = cell(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
    assert_close(h1, th, **F64, name="h")
    assert_close(c1, tc, **F64, name="c")


def test_cell_backward_finite_differences(rng):
    B, C, H = 2, 3, 5
    p = _lstm_params(rng, 1, C, H)
    W_ih, W_hh, b_ih, b_hh = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    x, h, c = rng.standard_normal((B, C)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    wh, wc = rng.standard_normal((B, H)), rng.standard_normal((B, H))  # random projections

    def f(_=None):
        h1, c1, _ = lstm_cell_forward(x, h, c, W_ih, W_hh, b_ih, b_hh)
        return float((h1 * wh).sum() + (c1 * wc).sum())

    _, _, cache = lstm_cell_forward(x, h, c, W_ih, W_hh, b_ih, b_hh)
    dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh = lstm_cell_backward(wh, wc, cache)
    for name, arr, grad in [("x", x, dx), ("h_prev", h, dh), ("c_prev", c, dc), ("W_ih", W_ih, dW_ih),
                            ("W_hh", W_hh, dW_hh), ("b_ih", b_ih, db_ih), ("b_hh", b_hh, db_hh)]:
        check_grad(f, arr, grad, atol=1e-8, rtol=1e-6, name=name)


@pytest.mark.parametrize("n_layer, T, B, C, H", [(1, 1, 1, 2, 3), (2, 5, 3, 4, 3), (3, 3, 2, 3, 2)])
def test_multilayer_backward_finite_differences(rng, n_layer, T, B, C, H):
    """Every weight, the input and the initial state, through outputs and the final state."""
    p = _lstm_params(rng, n_layer, C, H)
    x = rng.standard_normal((T, B, C))
    h0, c0 = rng.standard_normal((n_layer, B, H)), rng.standard_normal((n_layer, B, H))
    wy = rng.standard_normal((T, B, H))
    wh, wc = rng.standard_normal((n_layer, B, H)), rng.standard_normal((n_layer, B, H))

    def f(_=None):
        y, (h_n, c_n), _ = lstm_forward(x, p, n_layer, (h0, c0))
        return float((y * wy).sum() + (h_n * wh).sum() + (c_n * wc).sum())

    _, _, cache = lstm_forward(x, p, n_layer, (h0, c0))
    dx, grads, (dh0, dc0) = lstm_backward(wy, cache, (wh, wc))
    assert set(grads) == set(p)
    check_grad(f, x, dx, atol=1e-8, rtol=1e-6, name="x")
    check_grad(f, h0, dh0, atol=1e-8, rtol=1e-6, name="h0")
    check_grad(f, c0, dc0, atol=1e-8, rtol=1e-6, name="c0")
    for k in p:
        check_grad(f, p[k], grads[k], atol=1e-8, rtol=1e-6, name=k)


def _sampled_fd(loss_fn, arr, rng, n=6, eps=1e-6):
    """Central differences at n random entries of arr: (flat indices, estimates)."""
    flat = arr.reshape(-1)
    picks = rng.choice(flat.size, size=min(n, flat.size), replace=False)
    est = []
    for i in picks:
        old = flat[i]
        flat[i] = old + eps
        fp = loss_fn()
        flat[i] = old - eps
        fm = loss_fn()
        flat[i] = old
        est.append((fp - fm) / (2 * eps))
    return picks, np.array(est)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_model_gradients_finite_differences(rng, tie):
    """Sampled entries of every parameter's gradient, with a carried-in state and ignored targets."""
    cfg = _tiny(tie=tie)
    m = LSTMLM(cfg, seed=3, dtype=np.float64)
    for v in m.params.values():  # larger weights than the init: saturating gates get tested too
        v += rng.standard_normal(v.shape) * 0.3
    B, T = 2, 5
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    idx[0, :3] = 2  # a repeated token: its embedding row sums several gradients
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    targets[1, 2] = -100
    state = tuple(rng.standard_normal((cfg.n_layer, B, cfg.d_hidden)) for _ in range(2))
    loss, grads = m.loss_and_grads(idx, targets, state)
    assert set(grads) == set(m.params)
    assert loss == pytest.approx(m.loss(idx, targets, state), rel=1e-14)
    for k, p in m.params.items():
        assert grads[k].shape == p.shape and grads[k].dtype == np.float64
        picks, est = _sampled_fd(lambda: m.loss(idx, targets, state), p, rng)
        assert_close(grads[k].reshape(-1)[picks], est, atol=1e-8, rtol=1e-5, name=k)
    # the embedding row of a token that never appears (and is not tied) gets no gradient
    unused = sorted(set(range(cfg.vocab_size)) - set(idx.ravel().tolist()))
    if unused and not tie:
        assert not grads["emb.weight"][unused].any()


def test_model_gradients_full_finite_differences_one_layer(rng):
    """Every entry of every gradient, on the smallest model (1 layer, H = 3, V = 5)."""
    cfg = LSTMConfig(vocab_size=5, d_embed=2, d_hidden=3, n_layer=1)
    m = LSTMLM(cfg, seed=0, dtype=np.float64)
    idx, targets = rng.integers(0, 5, (2, 3)), rng.integers(0, 5, (2, 3))
    _, grads = m.loss_and_grads(idx, targets)
    for k, p in m.params.items():
        assert_close(grads[k], numerical_grad(lambda _: m.loss(idx, targets), p), atol=1e-9,
                     rtol=1e-6, name=k)


# --------------------------------------------------------------------------------------------
# The twins


def _torch_twin(m: LSTMLM, fused: bool = False) -> TorchLSTMLM:
    t = TorchLSTMLM(m.config, seed=0, fused=fused).double()
    t.load_state_dict(m.state_dict())
    return t


@pytest.mark.parametrize("tie, n_layer", [(False, 1), (False, 2), (True, 3)])
def test_twins_agree_float64(rng, tie, n_layer):
    """Logits, loss, returned state and every gradient, from a carried-in state."""
    cfg = LSTMConfig(vocab_size=13, d_embed=6 if tie else 5, d_hidden=6, n_layer=n_layer, tie_weights=tie)
    m = LSTMLM(cfg, seed=7, dtype=np.float64)
    t = _torch_twin(m)
    B, T = 3, 7
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    targets[0, 0] = -100
    state = tuple(rng.standard_normal((n_layer, B, 6)) for _ in range(2))

    logits, (h, c) = m.forward(idx, state)
    tlogits, (th, tc) = t(torch.tensor(idx), tuple(torch.tensor(s) for s in state))
    assert logits.shape == (B, T, cfg.vocab_size) and h.shape == c.shape == (n_layer, B, 6)
    assert_close(logits, tlogits, **F64, name="logits")
    assert_close(h, th, **F64, name="h_n")
    assert_close(c, tc, **F64, name="c_n")

    loss, grads, (h2, c2) = m.loss_and_grads(idx, targets, state, return_state=True)
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(c2, c)
    tloss = t.loss(idx, targets, state)
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-13)
    tgrads = {k: p.grad for k, p in t.named_parameters()}
    assert sorted(tgrads) == sorted(grads)
    for k in grads:
        assert_close(grads[k], tgrads[k], **F64, name=k)


def test_explicit_loop_matches_torch_nn_lstm(rng):
    """The twin's own loop against ``torch.nn.LSTM`` given the same (copied) weights."""
    cfg = LSTMConfig(vocab_size=9, d_embed=5, d_hidden=7, n_layer=2)
    t = TorchLSTMLM(cfg, seed=1).double()
    ref = torch.nn.LSTM(5, 7, 2).double()  # time-major, like the twin inside
    ref.load_state_dict({k[len("lstm."):]: v for k, v in t.state_dict().items() if k.startswith("lstm.")})
    idx = torch.tensor(rng.integers(0, 9, (4, 6)))
    state = tuple(torch.tensor(rng.standard_normal((2, 4, 7))) for _ in range(2))
    logits, (h, c) = t(idx, state)
    y, (rh, rc) = ref(t.emb.weight[idx.T], state)  # (T, B, H)
    ref_logits = (y @ t.head.weight.T + t.head.bias).transpose(0, 1)  # (B, T, V)
    assert_close(logits, ref_logits, **F64, name="logits")
    assert_close(h, rh, **F64, name="h")
    assert_close(c, rc, **F64, name="c")
    # gradients too: fused=True runs torch.nn.LSTM under the same parameter names
    f = TorchLSTMLM(cfg, seed=1, fused=True).double()
    assert isinstance(f.lstm, torch.nn.LSTM)
    f.load_state_dict(t.state_dict())
    targets = rng.integers(0, 9, (4, 6))
    t.loss(idx, targets, state).backward()
    f.loss(idx, targets, state).backward()
    for (k, p), (k2, q) in zip(t.named_parameters(), f.named_parameters()):
        assert k == k2
        assert_close(p.grad, q.grad, **F64, name=k)


def test_gate_order_is_read_from_one_place(rng, monkeypatch):
    """Both twins split the 4H axis with ``gate_slices``, i.e. by ``GATES``: permuting GATES
    changes both twins alike (forward AND the hand-written backward still agree with
    autograd) and moves them off torch.nn.LSTM's layout (so the constant really is used)."""
    assert GATES == ("i", "f", "g", "o")  # torch.nn.LSTM's layout
    assert gate_slices(2) == {"i": slice(0, 2), "f": slice(2, 4), "g": slice(4, 6), "o": slice(6, 8)}
    cfg = _tiny(n_layer=2)
    m = LSTMLM(cfg, seed=6, dtype=np.float64)
    t = _torch_twin(m)
    idx, targets = rng.integers(0, cfg.vocab_size, (2, 5)), rng.integers(0, cfg.vocab_size, (2, 5))
    torch_order, _ = m.forward(idx)
    monkeypatch.setattr(np_lstm, "GATES", ("o", "g", "i", "f"))
    logits, _ = m.forward(idx)
    assert not np.allclose(logits, torch_order)
    assert_close(logits, t(idx)[0], **F64, name="permuted gates: logits")
    _, grads = m.loss_and_grads(idx, targets)
    t.loss(idx, targets).backward()
    for k, p in t.named_parameters():
        assert_close(grads[k], p.grad, **F64, name=f"permuted gates: {k}")


def test_carried_state_equals_whole_sequence(rng):
    """Two halves with the state carried across give the logits and state of the whole."""
    cfg = _tiny(n_layer=2)
    m = LSTMLM(cfg, seed=5, dtype=np.float64)
    t = _torch_twin(m)
    idx = rng.integers(0, cfg.vocab_size, (3, 9))
    whole, (h, c) = m.forward(idx)
    first, s1 = m.forward(idx[:, :4])
    second, (h2, c2) = m.forward(idx[:, 4:], s1)
    assert_close(np.concatenate([first, second], axis=1), whole, atol=1e-14, rtol=1e-12)
    assert_close(h2, h, atol=1e-14, rtol=1e-12)
    assert_close(c2, c, atol=1e-14, rtol=1e-12)
    # the same in torch, and one token at a time (what generation does)
    state = None
    steps = []
    with torch.no_grad():
        for i in range(9):
            lg, state = t(idx[:, i : i + 1], state)
            steps.append(lg)
    assert_close(torch.cat(steps, dim=1), whole, **F64, name="torch token by token")
    # the zero state and state=None are the same thing
    zeros = m.init_state(3)
    np.testing.assert_array_equal(m.forward(idx, zeros)[0], whole)
    # loss_and_grads over windows carries the state the same way (truncated BPTT)
    targets = rng.integers(0, cfg.vocab_size, (3, 9))
    _, _, s = m.loss_and_grads(idx[:, :4], targets[:, :4], return_state=True)
    loss2, _, _ = m.loss_and_grads(idx[:, 4:], targets[:, 4:], s, return_state=True)
    assert loss2 == pytest.approx(m.loss(idx[:, 4:], targets[:, 4:], s1), rel=1e-14)


def test_truncated_bptt_gradient_stops_at_window(rng):
    """The second window's gradient does not depend on how the carried state was made
    (it is a constant), and differs from the gradient with a zero state."""
    cfg = _tiny()
    m = LSTMLM(cfg, seed=2, dtype=np.float64)
    idx, targets = rng.integers(0, cfg.vocab_size, (2, 6)), rng.integers(0, cfg.vocab_size, (2, 6))
    _, s = m.forward(idx[:, :3])
    _, g_carry = m.loss_and_grads(idx[:, 3:], targets[:, 3:], s)
    _, g_copy = m.loss_and_grads(idx[:, 3:], targets[:, 3:], tuple(x.copy() for x in s))
    _, g_zero = m.loss_and_grads(idx[:, 3:], targets[:, 3:])
    for k in g_carry:
        np.testing.assert_array_equal(g_carry[k], g_copy[k])
    assert any(not np.allclose(g_carry[k], g_zero[k]) for k in g_carry)


# --------------------------------------------------------------------------------------------
# Parameters, initialisation, state dicts


def test_param_names_shapes_and_init():
    cfg = LSTMConfig(vocab_size=11, d_embed=5, d_hidden=16, n_layer=2)
    shapes = param_shapes(cfg)
    assert shapes == {
        "emb.weight": (11, 5),
        "lstm.weight_ih_l0": (64, 5), "lstm.weight_hh_l0": (64, 16),
        "lstm.bias_ih_l0": (64,), "lstm.bias_hh_l0": (64,),
        "lstm.weight_ih_l1": (64, 16), "lstm.weight_hh_l1": (64, 16),
        "lstm.bias_ih_l1": (64,), "lstm.bias_hh_l1": (64,),
        "head.weight": (11, 16), "head.bias": (11,),
    }
    tied = param_shapes(LSTMConfig(vocab_size=11, d_embed=16, d_hidden=16, n_layer=1, tie_weights=True))
    assert "head.weight" not in tied and "head.bias" in tied
    p = init_params(cfg, seed=0, dtype=np.float64)
    k = 1 / np.sqrt(16)  # torch.nn.LSTM's U(-1/sqrt(H), 1/sqrt(H))
    for name, v in p.items():
        if name.startswith("lstm."):
            assert np.abs(v).max() <= k and np.abs(v).max() > 0.9 * k, name
    assert np.abs(p["emb.weight"]).max() <= 0.1 and not p["head.bias"].any()
    # one seed, one set of weights; another seed, others; float32 = float64 rounded
    p32 = init_params(cfg, seed=0, dtype=np.float32)
    for name in p:
        assert p32[name].dtype == np.float32
        np.testing.assert_array_equal(p32[name], p[name].astype(np.float32))
    assert not np.array_equal(init_params(cfg, seed=1)["emb.weight"], p32["emb.weight"])
    # the torch twin starts from the NumPy init and leaves torch's global generator alone
    g0 = torch.get_rng_state()
    t = TorchLSTMLM(cfg, seed=0)
    f = TorchLSTMLM(cfg, seed=0, fused=True)
    assert torch.equal(torch.get_rng_state(), g0)
    for name, v in t.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), p32[name])
        np.testing.assert_array_equal(f.state_dict()[name].numpy(), p32[name])


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_loads_half_precision_tensors(rng, half, dtype):
    """bfloat16 (no NumPy twin) and float16 state dicts and states load into the NumPy model,
    every value the widened tensor's."""
    cfg = _tiny(n_layer=2)
    src = LSTMLM(cfg, seed=1, dtype=np.float64)
    for v in src.params.values():
        v += rng.standard_normal(v.shape)
    sd = {k: torch.as_tensor(v).to(half) for k, v in src.state_dict().items()}
    m = LSTMLM(cfg, seed=2, dtype=dtype)
    m.load_state_dict(sd)
    for k, t in sd.items():
        assert m.params[k].dtype == dtype
        assert np.array_equal(m.params[k], t.double().numpy()), k  # widening is exact
    # and from a half-precision torch model, and a half-precision state
    t = TorchLSTMLM(cfg, seed=3).to(half)
    m.load_state_dict(t.state_dict())
    assert np.array_equal(m.params["lstm.weight_hh_l1"], t.lstm.weight_hh_l1.detach().double().numpy())
    idx = rng.integers(0, cfg.vocab_size, (2, 3))
    state = tuple(torch.as_tensor(rng.standard_normal((2, 2, 4))).to(half) for _ in range(2))
    logits, _ = m.forward(idx, state)
    expected, _ = m.forward(idx, tuple(s.double().numpy() for s in state))
    np.testing.assert_array_equal(logits, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_lossless(dtype):
    cfg = _tiny(tie=True)
    m = LSTMLM(cfg, seed=4, dtype=dtype)
    for v in m.params.values():
        v += np.random.default_rng(0).standard_normal(v.shape).astype(dtype)
    t = TorchLSTMLM(cfg, seed=9)
    if dtype == np.float64:
        t = t.double()
    t.load_state_dict(m.state_dict())
    back = LSTMLM(cfg, seed=123, dtype=dtype)
    arrays = {k: id(v) for k, v in back.params.items()}
    back.load_state_dict(t.state_dict())
    assert {k: id(v) for k, v in back.params.items()} == arrays  # loaded in place
    for k, v in m.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)
    sd = m.state_dict()
    sd["emb.weight"][0, 0] = 99.0  # a copy
    assert m.params["emb.weight"][0, 0] != 99.0


def test_float32_model_close_to_float64():
    cfg = _tiny()
    m64, m32 = LSTMLM(cfg, seed=1, dtype=np.float64), LSTMLM(cfg, seed=1, dtype=np.float32)
    idx = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8))
    l32, g32 = m32.loss_and_grads(idx, idx)
    l64, g64 = m64.loss_and_grads(idx, idx)
    assert isinstance(l32, float) and l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32
        assert_close(g32[k], g64[k], atol=1e-6, rtol=1e-3, name=k)
    logits, (h, c) = m32.forward(idx)
    assert logits.dtype == h.dtype == c.dtype == np.float32


def test_torch_dropout_only_in_training_mode(rng):
    cfg = LSTMConfig(vocab_size=7, d_embed=4, d_hidden=8, n_layer=2, dropout=0.5)
    m = LSTMLM(cfg, seed=0, dtype=np.float64)
    for fused in (False, True):
        t = _torch_twin(m, fused=fused)
        idx = rng.integers(0, 7, (2, 5))
        t.eval()
        assert_close(t(idx)[0], m.forward(idx)[0], **F64, name="eval mode = NumPy")
        t.train()
        torch.manual_seed(0)
        assert not torch.allclose(t(idx)[0], torch.tensor(m.forward(idx)[0]))


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_bad_inputs(framework):
    cfg = _tiny()
    m = LSTMLM(cfg) if framework == "numpy" else TorchLSTMLM(cfg)
    good = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match=r"\[0, 7\).*max 7"):
        m.forward(good + 7)
    with pytest.raises(ValueError, match="min -1"):
        m.forward(good - 1)
    with pytest.raises(ValueError, match=r"shape \(B, T\).*\(6,\)"):
        m.forward(np.zeros(6, dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        m.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        m.forward(np.zeros((2, 0), dtype=np.int64))
    h = np.zeros((2, 2, 4))
    with pytest.raises(ValueError, match=r"state h must have shape .*\(2, 2, 4\), got \(1, 2, 4\)"):
        m.forward(good, (h[:1], h))
    with pytest.raises(ValueError, match=r"state c .*got \(2, 3, 4\)"):
        m.forward(good, (h, np.zeros((2, 3, 4))))
    with pytest.raises(ValueError, match="tuple"):
        m.forward(good, h)
    with pytest.raises(ValueError, match=r"targets shape \(2, 2\)"):
        m.loss(good, good[:, :2])
    # bad targets: the same ValueError in both twins (torch's own cross_entropy would raise an
    # IndexError for 7 and silently cast float targets)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 7\) or ignore_index=-100, got \[7\]"):
        m.loss(good, np.array([[0, 7, -100], [1, 2, 3]]))
    with pytest.raises(ValueError, match=r"\[0, 7\) or ignore_index=-100, got \[-1, 9\]"):
        m.loss(good, np.array([[-1, 0, 0], [0, 9, 0]]))
    with pytest.raises(ValueError, match=r"\[0, 7\) or ignore_index=0, got \[-100\]"):
        m.loss(good, np.array([[-100, 0, 0], [0, 0, 0]]), ignore_index=0)
    with pytest.raises(ValueError, match="targets must hold integer token ids, got dtype .*float"):
        m.loss(good, good.astype(np.float32))
    if framework == "torch":
        with pytest.raises(ValueError, match=r"got \[7, 7\]"):
            m.loss(torch.tensor(good), torch.tensor(good + 7 * np.eye(2, 3, dtype=np.int64)))
        with pytest.raises(ValueError, match="dtype torch.float64"):
            m.loss(torch.tensor(good), torch.tensor(good, dtype=torch.float64))
    else:
        with pytest.raises(ValueError, match=r"\[0, 7\).*got \[7, 7\]"):
            m.loss_and_grads(good, good + 7 * np.eye(2, 3, dtype=np.int64))
    ok = m.loss(good, np.array([[0, 6, -100], [1, 2, 3]]))  # in range and an ignored position
    assert np.isfinite(ok.item() if framework == "torch" else ok)
    sd = m.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['head.bias'\]"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "head.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        m.load_state_dict({**sd, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"emb.weight: expected \(7, 4\), got \(4, 7\)"):
        m.load_state_dict({**sd, "emb.weight": np.zeros((4, 7))})
    with pytest.raises(ValueError, match="LSTMConfig"):
        type(m)("not a config")


def test_numpy_bad_targets_and_dtype():
    m = LSTMLM(_tiny())
    idx = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="targets must be in"):
        m.loss_and_grads(idx, idx + 9)
    with pytest.raises(ValueError, match="integer"):
        m.loss_and_grads(idx, idx.astype(float))
    with pytest.raises(ValueError, match="float32 or float64"):
        LSTMLM(_tiny(), dtype=np.int32)
