"""Tests for the Transformer LM twins, minilm.numpy.transformer and minilm.torch.transformer.

- The whole model's hand-written backward against finite differences (a sample of entries of
  every parameter) and against torch autograd of the twin (float64: logits, loss, every
  gradient), with and without tied weights and grouped-query heads.
- Same seed -> bitwise the same weights in both twins; state_dict round trips are lossless.
- The three torch attention backends agree ("triton" under the Triton interpreter on CPU).
- KV cache: cached logits equal uncached logits, in both twins.
- Bad input raises ValueError naming the offending values.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from minilm.config import TransformerConfig
from minilm.numpy.functional import cross_entropy
from minilm.numpy.transformer import TransformerLM as NumpyLM
from minilm.numpy.transformer import init_params, param_shapes
from minilm.testing import assert_close
from minilm.torch.transformer import TransformerLM as TorchLM

CONFIGS = {
    "tied-gqa": dict(vocab_size=13, context_length=9, d_model=12, n_layer=2, n_head=4, n_kv_head=2),
    "untied-mha": dict(vocab_size=11, context_length=8, d_model=8, n_layer=2, n_head=2, tie_weights=False),
    "untied-mqa": dict(vocab_size=7, context_length=6, d_model=9, n_layer=1, n_head=3, n_kv_head=1,
                       d_ff=10, tie_weights=False),
}


def make_config(name: str, **overrides) -> TransformerConfig:
    return TransformerConfig(**{**CONFIGS[name], **overrides})


def randomised(model: NumpyLM, rng: np.random.Generator, scale: float = 0.3) -> NumpyLM:
    """Perturb every parameter so no gradient hides behind a zero bias or a unit LN weight."""
    for p in model.params.values():
        p += (rng.standard_normal(p.shape) * scale).astype(p.dtype)
    return model


def tokens(rng, cfg, B, T):
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


# ---------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_twins_agree_float64(rng, name, attention):
    cfg = make_config(name)
    model = randomised(NumpyLM(cfg, seed=1, dtype=np.float64), rng)
    idx, targets = tokens(rng, cfg, 3, cfg.context_length - 1)
    targets[1, 2] = -100  # an ignored position
    loss, grads = model.loss_and_grads(idx, targets)

    twin = TorchLM(cfg, attention=attention).double()
    twin.load_state_dict(model.state_dict())
    logits_t = twin(torch.as_tensor(idx))
    loss_t = twin.loss(torch.as_tensor(idx), torch.as_tensor(targets))
    loss_t.backward()

    assert_close(model.forward(idx), logits_t, 1e-10, 1e-8, "logits")
    assert_close(loss, loss_t, 1e-12, 1e-10, "loss")
    assert math.isclose(loss, cross_entropy(model.forward(idx), targets), rel_tol=1e-12)
    named = dict(twin.named_parameters())
    assert sorted(grads) == sorted(named) == sorted(model.params)
    for k, g in grads.items():
        assert g.shape == model.params[k].shape and g.dtype == np.float64
        assert_close(g, named[k].grad, 1e-10, 1e-7, k)


@pytest.mark.parametrize("name", ["tied-gqa", "untied-mqa"])
def test_gradients_vs_finite_differences(rng, name):
    """Central differences of the loss at up to 4 random entries of every parameter."""
    cfg = make_config(name)
    model = randomised(NumpyLM(cfg, seed=2, dtype=np.float64), rng)
    idx, targets = tokens(rng, cfg, 2, 5)
    loss, grads = model.loss_and_grads(idx, targets)
    eps = 1e-6
    for k, p in model.params.items():
        flat, gflat = p.reshape(-1), grads[k].reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up = model.loss(idx, targets)
            flat[i] = old - eps
            down = model.loss(idx, targets)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(gflat[i] - numeric) <= 1e-7 + 1e-5 * abs(numeric), (k, int(i), gflat[i], numeric)
    # position rows past T get no gradient (they were never used)
    assert not grads["pos_emb.weight"][5:].any()


def test_tied_head_gradient_is_sum_of_both_uses(rng):
    """With tied weights, grad(tok_emb) = embedding part + head part (untied model's two grads)."""
    tied = randomised(NumpyLM(make_config("tied-gqa"), dtype=np.float64), rng)
    untied = NumpyLM(make_config("tied-gqa", tie_weights=False), dtype=np.float64)
    untied.load_state_dict({**tied.state_dict(), "lm_head.weight": tied.params["tok_emb.weight"]})
    idx, targets = tokens(rng, tied.config, 2, 6)
    loss_t, g_t = tied.loss_and_grads(idx, targets)
    loss_u, g_u = untied.loss_and_grads(idx, targets)
    assert loss_t == pytest.approx(loss_u, rel=1e-14)
    assert_close(g_t["tok_emb.weight"], g_u["tok_emb.weight"] + g_u["lm_head.weight"], 1e-14, 1e-10)


def test_float32_default_and_float64_on_request(rng):
    cfg = make_config("tied-gqa")
    m32, m64 = NumpyLM(cfg), NumpyLM(cfg, dtype=np.float64)
    idx, targets = tokens(rng, cfg, 2, 4)
    assert {p.dtype for p in m32.params.values()} == {np.dtype(np.float32)}
    assert m32(idx).dtype == np.float32 and m64(idx).dtype == np.float64
    loss, grads = m32.loss_and_grads(idx, targets)
    assert isinstance(loss, float)
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
    # the float32 weights are the float64 weights rounded
    for k in m32.params:
        assert np.array_equal(m32.params[k], m64.params[k].astype(np.float32)), k
    assert_close(m32(idx), m64(idx), 1e-5, 1e-4, "float32 vs float64 logits")
    with pytest.raises(ValueError, match="float16"):
        NumpyLM(cfg, dtype=np.float16)


def test_ignore_index_and_targets_checks(rng):
    cfg = make_config("untied-mha")
    model = NumpyLM(cfg, dtype=np.float64)
    idx, targets = tokens(rng, cfg, 2, 4)
    targets[0, :] = 7
    t2 = targets.copy()
    t2[0, :] = -1  # a custom ignore index: only row 1 counts
    loss, _ = model.loss_and_grads(idx, t2, ignore_index=-1)
    assert loss == pytest.approx(cross_entropy(model(idx)[1], targets[1]), rel=1e-12)
    with pytest.raises(ValueError, match=r"targets shape \(2, 3\).*\(2, 4\)"):
        model.loss_and_grads(idx, targets[:, :3])
    with pytest.raises(ValueError, match="float64"):
        model.loss_and_grads(idx, targets.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# Initialisation and state dicts


def test_same_seed_same_weights_in_both_twins():
    cfg = make_config("untied-mha")
    a, t = NumpyLM(cfg, seed=7), TorchLM(cfg, seed=7)
    sd = t.state_dict()
    assert list(sd) == list(a.params) == list(param_shapes(cfg))
    for k, v in a.params.items():
        assert np.array_equal(sd[k].numpy(), v) and sd[k].dtype == torch.float32, k
    b = NumpyLM(cfg, seed=8)
    assert not np.array_equal(a.params["tok_emb.weight"], b.params["tok_emb.weight"])
    # building a torch model draws nothing from torch's global generator
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    TorchLM(cfg, seed=3)
    assert torch.equal(torch.rand(1), before)


def test_init_statistics():
    """GPT-2 init: N(0, 0.02^2) weights, residual projections 0.02/sqrt(2 n_layer), LN 1, biases 0."""
    cfg = TransformerConfig(vocab_size=500, context_length=64, d_model=64, n_layer=8, n_head=4)
    p = init_params(cfg, seed=0, dtype=np.float64)
    assert p["tok_emb.weight"].std() == pytest.approx(0.02, rel=0.03)
    assert p["blocks.3.mlp.fc.weight"].std() == pytest.approx(0.02, rel=0.03)
    assert p["blocks.3.mlp.proj.weight"].std() == pytest.approx(0.02 / 4, rel=0.03)
    assert p["blocks.0.attn.o_proj.weight"].std() == pytest.approx(0.02 / 4, rel=0.05)
    assert (p["blocks.5.ln2.weight"] == 1).all() and (p["ln_f.weight"] == 1).all()
    assert not p["blocks.2.attn.k_proj.bias"].any() and not p["ln_f.bias"].any()
    assert "lm_head.weight" not in p


@pytest.mark.parametrize("name", ["tied-gqa", "untied-mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_is_lossless(rng, name, dtype):
    cfg = make_config(name)
    a = randomised(NumpyLM(cfg, seed=0, dtype=dtype), rng)
    t = TorchLM(cfg, seed=5)
    if dtype == np.float64:
        t = t.double()
    t.load_state_dict(a.state_dict())  # numpy arrays into torch
    b = NumpyLM(cfg, seed=9, dtype=dtype)
    b.load_state_dict(t.state_dict())  # tensors into numpy
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]) and b.params[k].dtype == dtype, k
    assert ("lm_head.weight" in t.state_dict()) == (not cfg.tie_weights)


def test_load_state_dict_keeps_live_arrays_and_dtype(rng):
    cfg = make_config("tied-gqa")
    m = NumpyLM(cfg)
    live = m.params["blocks.1.mlp.fc.weight"]
    src = NumpyLM(cfg, seed=4, dtype=np.float64).state_dict()
    m.load_state_dict(src)
    assert m.params["blocks.1.mlp.fc.weight"] is live and live.dtype == np.float32
    assert np.array_equal(live, src["blocks.1.mlp.fc.weight"].astype(np.float32))
    # half-precision tensors load too (widened exactly, then rounded to the model's dtype)
    half = {k: torch.as_tensor(v).to(torch.bfloat16) for k, v in src.items()}
    m.load_state_dict(half)
    assert np.array_equal(live, half["blocks.1.mlp.fc.weight"].float().numpy())
    # state_dict() returns copies
    m.state_dict()["ln_f.weight"][:] = 5.0
    assert (m.params["ln_f.weight"] == 1.0).all()


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_loads_half_precision_tensors(rng, half, dtype):
    """bfloat16 (no NumPy twin) and float16 state dicts load, every value the widened tensor's."""
    cfg = make_config("untied-mha")
    sd = {k: torch.as_tensor(v).to(half) for k, v in randomised(NumpyLM(cfg, seed=1), rng).state_dict().items()}
    m = NumpyLM(cfg, seed=2, dtype=dtype)
    m.load_state_dict(sd)
    for k, t in sd.items():
        assert m.params[k].dtype == dtype
        assert np.array_equal(m.params[k], t.double().numpy()), k  # widening is exact
    # and from a half-precision torch model
    t = TorchLM(cfg, seed=3).to(half)
    m.load_state_dict(t.state_dict())
    assert np.array_equal(m.params["tok_emb.weight"], t.tok_emb.weight.detach().double().numpy())


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_load_state_dict_errors(twin):
    cfg = make_config("tied-gqa")
    m = NumpyLM(cfg) if twin == "numpy" else TorchLM(cfg)
    good = NumpyLM(cfg).state_dict()
    bad = dict(good)
    del bad["blocks.1.ln2.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.ln2.bias'\]"):
        m.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected keys \['lm_head.weight'\]"):
        m.load_state_dict({**good, "lm_head.weight": good["tok_emb.weight"]})
    bad = {**good, "pos_emb.weight": np.zeros((4, 12), np.float32)}
    with pytest.raises(ValueError, match=r"pos_emb.weight: expected \(9, 12\), got \(4, 12\)"):
        m.load_state_dict(bad)
    # nothing was changed by the failed loads
    assert_close(m.state_dict()["pos_emb.weight"], good["pos_emb.weight"], 0, 0)


# ---------------------------------------------------------------------------------------------
# Attention backends


def _triton_available() -> str | None:
    """A reason to skip when the optional dependency triton is missing; None otherwise. Our own
    minilm.kernels is then imported for real, so a broken import of it fails the run."""
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return "triton is not installed (the Triton backend needs it; Linux only)"
    import minilm.kernels  # noqa: F401
    return None


BACKEND_CONFIGS = {  # head dim D = 8 (the kernel's smallest); context_length 13
    "gqa": dict(vocab_size=17, context_length=13, d_model=32, n_layer=2, n_head=4, n_kv_head=2),
    "mha": dict(vocab_size=17, context_length=13, d_model=16, n_layer=2, n_head=2),
}


@pytest.mark.parametrize("T", [1, 7, 13], ids=["T=1", "T=7-prime", "T=13-full-context"])
@pytest.mark.parametrize("shape", list(BACKEND_CONFIGS))
@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_torch_attention_backends_agree(rng, backend, shape, T):
    """Every backend against "naive" in float32: logits, and every gradient of the loss."""
    if backend == "triton" and (reason := _triton_available()):
        pytest.skip(reason)
    cfg = TransformerConfig(**BACKEND_CONFIGS[shape])
    sd = randomised(NumpyLM(cfg, seed=3), rng).state_dict()
    idx, targets = tokens(rng, cfg, 2, T)
    results = {}
    for name in ("naive", backend):
        model = TorchLM(cfg, attention=name)
        model.load_state_dict(sd)
        loss = model.loss(idx, targets)
        loss.backward()
        results[name] = (model(idx).detach(), {k: p.grad for k, p in model.named_parameters()})
    assert_close(results[backend][0], results["naive"][0], 2e-5, 1e-4, "logits")
    for k, g in results["naive"][1].items():
        assert_close(results[backend][1][k], g, 2e-5, 1e-3, k)
    # the compared gradients are not all zero; with T = 1 the softmax over a single key is 1
    # whatever the key, so only there the keys get none
    g = results["naive"][1]
    assert g["blocks.0.attn.v_proj.weight"].abs().max() > 1e-6
    assert (g["blocks.0.attn.k_proj.weight"].abs().max() > 1e-6) == (T > 1)


def test_triton_head_dim_checked_at_construction():
    """D = d_model / n_head outside the kernel's [8, 128] is a ValueError naming all three."""
    if reason := _triton_available():
        pytest.skip(reason)
    small = TransformerConfig(vocab_size=5, context_length=4, d_model=12, n_layer=1, n_head=3)  # D = 4
    with pytest.raises(ValueError, match=r"d_model / n_head = 12 / 3 = 4 .*\[8, 128\]"):
        TorchLM(small, attention="triton")
    large = TransformerConfig(vocab_size=5, context_length=4, d_model=258, n_layer=1, n_head=2)  # D = 129
    with pytest.raises(ValueError, match=r"d_model / n_head = 258 / 2 = 129 .*\[8, 128\]"):
        TorchLM(large, attention="triton")
    # the ends of the range are fine, and other backends do not care
    TorchLM(TransformerConfig(vocab_size=5, context_length=4, d_model=16, n_layer=1, n_head=2), attention="triton")
    TorchLM(small, attention="sdpa")


def test_only_triton_construction_imports_the_kernels(monkeypatch):
    """With minilm.kernels unimportable, sdpa/naive models build and run; triton says why not."""
    monkeypatch.setitem(sys.modules, "minilm.kernels", None)  # `import minilm.kernels` now fails
    cfg = TransformerConfig(vocab_size=5, context_length=4, d_model=12, n_layer=1, n_head=3)  # D = 4
    for attention in ("naive", "sdpa"):
        assert TorchLM(cfg, attention=attention)(np.zeros((1, 3), np.int64)).shape == (1, 3, 5)
    with pytest.raises(RuntimeError, match='attention="triton" needs minilm.kernels'):
        TorchLM(cfg, attention="triton")


def test_bad_attention_backend():
    with pytest.raises(ValueError, match=r"\('naive', 'sdpa', 'triton'\).*'flash'"):
        TorchLM(make_config("tied-gqa"), attention="flash")


def test_dropout_only_in_torch_training_mode(rng):
    cfg = make_config("tied-gqa", dropout=0.5)
    np_model = NumpyLM(cfg, dtype=np.float64)  # NumPy ignores dropout
    t = TorchLM(cfg).double()
    t.load_state_dict(np_model.state_dict())
    idx, _ = tokens(rng, cfg, 2, 6)
    t.eval()
    assert_close(t(idx), np_model(idx), 1e-12, 1e-10, "eval mode = numpy")
    t.train()
    torch.manual_seed(0)
    assert (t(idx) - t(idx)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("twin", ["numpy", "naive", "sdpa", "triton"])
def test_kv_cache_matches_full_forward(rng, twin):
    """Prefill 3 tokens, then a chunk of 2, then one token at a time up to context_length."""
    if twin == "triton" and (reason := _triton_available()):
        pytest.skip(reason)
    cfg = TransformerConfig(vocab_size=17, context_length=9, d_model=16, n_layer=2, n_head=2, n_kv_head=1)
    np_model = randomised(NumpyLM(cfg, seed=3, dtype=np.float64), rng)
    idx, _ = tokens(rng, cfg, 2, 9)
    if twin == "numpy":
        model, atol = np_model, 1e-12
    else:
        model = TorchLM(cfg, attention=twin)
        if twin != "triton":
            model = model.double()
        model.load_state_dict(np_model.state_dict())
        atol = 1e-12 if twin != "triton" else 2e-5
    with torch.no_grad():
        full = model(idx)
        cache = model.init_cache(2)
        chunks = [(0, 3), (3, 5)] + [(t, t + 1) for t in range(5, 9)]
        parts = []
        for a, b in chunks:
            parts.append(model(idx[:, a:b], cache=cache))
            assert cache.length == b
        cached = np.concatenate([np.asarray(p) for p in parts], axis=1)
        assert_close(cached, full, atol, 1e-6, f"{twin} cached vs full")
        with pytest.raises(ValueError, match=r"cache.length=9 \+ T=1 exceeds context_length=9"):
            model(idx[:, :1], cache=cache)
        with pytest.raises(ValueError, match="batch size 1.*2"):
            model(idx[:1, :1], cache=model.init_cache(2))
        # rewinding the cache and feeding the same tokens again gives the same logits
        cache.length = 5
        assert_close(model(idx[:, 5:7], cache=cache), full[:, 5:7], atol, 1e-6, "rewound")


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_head=4"):
        TransformerConfig(vocab_size=5, context_length=4, d_model=10, n_layer=1, n_head=4)
    with pytest.raises(ValueError, match="n_head=4 is not divisible by n_kv_head=3"):
        TransformerConfig(vocab_size=5, context_length=4, d_model=8, n_layer=1, n_head=4, n_kv_head=3)


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_bad_tokens_raise(twin):
    cfg = make_config("tied-gqa")  # V = 13, context_length = 9
    model = NumpyLM(cfg) if twin == "numpy" else TorchLM(cfg)
    with pytest.raises(ValueError, match=r"\[0, 13\).*max 13"):
        model(np.array([[1, 13]]))
    with pytest.raises(ValueError, match="min -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="T=10 exceeds context_length=9"):
        model(np.zeros((1, 10), np.int64))
    with pytest.raises(ValueError, match="integer.*float"):
        model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(B, T\).*\(3,\)"):
        model(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"non-empty.*\(1, 0\)"):
        model(np.zeros((1, 0), np.int64))
    # targets: the same ValueError in both twins (torch's own cross_entropy would raise an
    # IndexError for 13 and silently cast float targets)
    idx = np.array([[1, 2, 3]])
    fits = [model.loss] + ([model.loss_and_grads] if twin == "numpy" else [])
    for fit in fits:
        with pytest.raises(ValueError, match=r"targets must be in \[0, 13\) or ignore_index=-100, got \[13\]"):
            fit(idx, np.array([[1, 13, -100]]))
        with pytest.raises(ValueError, match=r"\[0, 13\) or ignore_index=-100, got \[-1, 20\]"):
            fit(idx, np.array([[-1, 2, 20]]))
        with pytest.raises(ValueError, match=r"\[0, 13\) or ignore_index=-1, got \[-100\]"):
            fit(idx, np.array([[1, 2, -100]]), ignore_index=-1)
        with pytest.raises(ValueError, match="targets must hold integer token ids, got dtype .*float"):
            fit(idx, np.array([[1.0, 2.0, 3.0]]))
        with pytest.raises(ValueError, match=r"targets shape \(1, 2\) must equal idx shape \(1, 3\)"):
            fit(idx, np.array([[1, 2]]))
        out = fit(idx, np.array([[1, 12, -100]]))  # in range, and an ignored position: fine
        loss = out[0] if isinstance(out, tuple) else out
        assert math.isfinite(loss.item() if isinstance(loss, torch.Tensor) else loss)
    if twin == "numpy":
        with pytest.raises(ValueError, match="max 13"):
            model.loss_and_grads(np.array([[1, 13]]), np.array([[1, 2]]))
    else:  # torch tensors too
        with pytest.raises(ValueError, match=r"got \[13\]"):
            model.loss(torch.tensor(idx), torch.tensor([[1, 13, 2]]))
        with pytest.raises(ValueError, match="dtype torch.float32"):
            model.loss(torch.tensor(idx), torch.tensor([[1.0, 2.0, 3.0]]))


# ---------------------------------------------------------------------------------------------
# Post-LayerNorm decoder (norm="post"): no ln_f, blocks x = LN(x + f(x))


@pytest.mark.parametrize("name", ["tied-gqa", "untied-mqa"])
def test_post_ln_twins_agree_float64_and_finite_differences(rng, name):
    cfg = make_config(name, norm="post")
    assert "ln_f.weight" not in param_shapes(cfg)
    model = randomised(NumpyLM(cfg, seed=3, dtype=np.float64), rng)
    idx, targets = tokens(rng, cfg, 2, 5)
    targets[0, 1] = -100
    loss, grads = model.loss_and_grads(idx, targets)
    twin = TorchLM(cfg, attention="naive").double()
    twin.load_state_dict(model.state_dict())
    assert sorted(twin.state_dict()) == sorted(model.params)
    loss_t = twin.loss(torch.as_tensor(idx), torch.as_tensor(targets))
    loss_t.backward()
    assert_close(model.forward(idx), twin(torch.as_tensor(idx)), 1e-10, 1e-8, "logits")
    assert_close(loss, loss_t, 1e-12, 1e-10, "loss")
    named = dict(twin.named_parameters())
    for k, g in grads.items():
        assert_close(g, named[k].grad, 1e-10, 1e-7, k)
    eps = 1e-6
    for k, p in model.params.items():
        flat, gflat = p.reshape(-1), grads[k].reshape(-1)
        for i in rng.choice(flat.size, size=min(3, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up = model.loss(idx, targets)
            flat[i] = old - eps
            down = model.loss(idx, targets)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(gflat[i] - numeric) <= 1e-7 + 1e-5 * abs(numeric), (k, int(i), gflat[i], numeric)


def test_post_ln_differs_from_pre_ln_and_kv_cache_works(rng):
    pre = NumpyLM(make_config("tied-gqa"), seed=0, dtype=np.float64)
    post = NumpyLM(make_config("tied-gqa", norm="post"), seed=0, dtype=np.float64)
    shared = {k: v for k, v in pre.params.items() if not k.startswith("ln_f")}
    post.load_state_dict(shared)
    idx, _ = tokens(rng, pre.config, 2, 6)
    assert np.abs(pre.forward(idx) - post.forward(idx)).max() > 1e-3
    cache = post.init_cache(2)
    step = np.concatenate([post.forward(idx[:, :4], cache=cache), post.forward(idx[:, 4:], cache=cache)], axis=1)
    assert_close(step, post.forward(idx), 1e-12, 1e-10, "cached post-LN")
    with pytest.raises(ValueError, match="norm"):
        make_config("tied-gqa", norm="sandwich")
    with pytest.raises(ValueError, match="unexpected keys.*ln_f"):
        post.load_state_dict(pre.state_dict())
