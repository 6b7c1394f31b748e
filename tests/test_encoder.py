"""Tests for minilm.numpy.encoder and its twin minilm.torch.encoder (BERT-style encoder).

NumPy float64 is the reference: the torch twin (autograd) must agree on hidden states, every
head's logits, the loss and every gradient; the hand-written backward is also checked by
central finite differences. The padding mask is checked by perturbing padded token ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minilm.config import EncoderConfig
from minilm.numpy.encoder import TransformerEncoder as NumpyEncoder
from minilm.numpy.encoder import encoder_param_shapes
from minilm.numpy.layers import to_numpy
from minilm.testing import assert_close
from minilm.torch.encoder import TransformerEncoder as TorchEncoder

V, PAD = 13, 12  # the last id plays [PAD] in these tests


def make(norm: str = "post", n_classes: int | None = 4, **kw) -> EncoderConfig:
    """norm "post", "pre", or "post+causal" (causal attention, the pooler on the last real token)."""
    norm, _, causal = norm.partition("+")
    return EncoderConfig(vocab_size=V, context_length=9, d_model=12, n_layer=2, n_head=3, d_ff=10,
                         n_classes=n_classes, norm=norm, causal=causal == "causal", **kw)


def randomised(model: NumpyEncoder, rng: np.random.Generator, scale: float = 0.3) -> NumpyEncoder:
    """Perturb every parameter so no gradient hides behind a zero bias or a unit LN weight."""
    for p in model.params.values():
        p += (rng.standard_normal(p.shape) * scale).astype(p.dtype)
    return model


def batch(rng, B: int = 3, T: int = 7):
    """Tokens, segment ids and a padding mask (row 1 padded after 5, row 2 after 3), and
    MLM targets at about 40 % of the real positions."""
    idx = rng.integers(0, V - 1, (B, T))
    mask = np.ones((B, T), dtype=bool)
    mask[1, 5:] = False
    mask[2, 3:] = False
    idx[~mask] = PAD
    seg = np.where(np.arange(T) >= 3, 1, 0)[None].repeat(B, 0) * mask
    mlm = np.where((rng.random((B, T)) < 0.4) & mask, rng.integers(0, V - 1, (B, T)), -100)
    mlm[0, 1] = 4  # at least one
    return idx, seg, mask, mlm


def twins(cfg, rng, attention="naive"):
    model = randomised(NumpyEncoder(cfg, seed=1, dtype=np.float64), rng)
    twin = TorchEncoder(cfg, attention=attention).double()
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.mark.parametrize("norm, attention, heads", [
    ("post", "naive", "mlm+nsp+cls"), ("pre", "naive", "mlm+nsp+cls"), ("post", "sdpa", "mlm+nsp+cls"),
    ("pre", "sdpa", "mlm+nsp+cls"), ("post", "naive", "mlm"), ("post", "sdpa", "nsp"), ("pre", "naive", "cls"),
    ("post+causal", "naive", "mlm+nsp+cls"), ("post+causal", "sdpa", "mlm+nsp+cls"),
])
def test_twins_agree_float64(rng, norm, attention, heads):
    cfg = make(norm)
    model, twin = twins(cfg, rng, attention)
    idx, seg, mask, mlm = batch(rng)
    targets = {"mlm": dict(mlm_targets=mlm), "nsp": dict(nsp_labels=np.array([1, 0, 1])),
               "cls": dict(labels=np.array([3, 0, 2]))}
    kw = {}
    for h in heads.split("+"):
        kw.update(targets[h])
    loss, grads = model.loss_and_grads(idx, seg, mask, **kw)
    loss_t = twin.loss(idx, seg, mask, **kw)
    loss_t.backward()
    assert_close(loss, loss_t, 1e-12, 1e-10, "loss")
    for name in ("forward", "mlm_logits", "nsp_logits", "class_logits"):
        assert_close(getattr(model, name)(idx, seg, mask), getattr(twin, name)(idx, seg, mask), 1e-10, 1e-8, name)
    named = dict(twin.named_parameters())
    assert sorted(grads) == sorted(named) == sorted(model.params) == sorted(encoder_param_shapes(cfg))
    for k, g in grads.items():
        assert g.shape == model.params[k].shape and g.dtype == np.float64
        tg = named[k].grad
        assert_close(g, np.zeros_like(g) if tg is None else tg, 1e-10, 1e-7, k)
    used = {"mlm": "mlm.dense.weight", "nsp": "nsp.weight", "cls": "cls.weight"}
    for h, key in used.items():
        assert bool(np.abs(grads[key]).max() > 0) == (h in heads), key


@pytest.mark.parametrize("norm", ["post", "pre", "post+causal"])
def test_gradients_vs_finite_differences(rng, norm):
    """Central differences of the summed loss at up to 3 random entries of every parameter."""
    cfg = make(norm)
    model = randomised(NumpyEncoder(cfg, seed=2, dtype=np.float64), rng)
    idx, seg, mask, mlm = batch(rng)
    kw = dict(mlm_targets=mlm, nsp_labels=np.array([0, 1, 1]), labels=np.array([1, 3, 0]))
    loss, grads = model.loss_and_grads(idx, seg, mask, **kw)
    eps = 1e-6
    for k, p in model.params.items():
        flat, gflat = p.reshape(-1), grads[k].reshape(-1)
        picks = rng.choice(flat.size, size=min(3, flat.size), replace=False)
        if k == "tok_emb.weight":  # rows of tokens used (embedding and tied decoder)
            picks = np.concatenate([picks, [idx[0, 0] * cfg.d_model, mlm[0, 1] * cfg.d_model + 5]])
        for i in picks:
            old = flat[i]
            flat[i] = old + eps
            up = model.loss(idx, seg, mask, **kw)
            flat[i] = old - eps
            down = model.loss(idx, seg, mask, **kw)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(gflat[i] - numeric) <= 1e-7 + 1e-5 * abs(numeric), (k, int(i), gflat[i], numeric)
    assert not grads["pos_emb.weight"][7:].any()


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_padded_positions_change_nothing(rng, twin):
    cfg = make()
    model, tmodel = twins(cfg, rng)
    m = model if twin == "numpy" else tmodel
    idx, seg, mask, _ = batch(rng)
    idx2 = idx.copy()
    idx2[~mask] = rng.integers(0, V, int((~mask).sum()))  # anything at the padded positions
    seg2 = seg.copy()
    seg2[~mask] = 1

    def run(f, *a):
        out = f(*a)
        return out.detach().numpy() if isinstance(out, torch.Tensor) else out

    for name in ("nsp_logits", "class_logits"):
        assert_close(run(getattr(m, name), idx2, seg2, mask), run(getattr(m, name), idx, seg, mask),
                     1e-12, 1e-12, name)
    h, h2 = run(m.forward, idx, seg, mask), run(m.forward, idx2, seg2, mask)
    assert_close(h2[mask], h[mask], 1e-12, 1e-12, "real positions")
    # the broken variant: without the mask the same change reaches the real positions
    assert np.abs(run(m.forward, idx2, seg2) [mask] - run(m.forward, idx, seg)[mask]).max() > 1e-3


def test_bidirectional_first_token_sees_the_last(rng):
    model = NumpyEncoder(make(), seed=0, dtype=np.float64)
    idx, seg, _, _ = batch(rng)
    idx2 = idx.copy()
    idx2[0, -1] = (idx[0, -1] + 1) % (V - 1)
    assert np.abs(model.forward(idx2, seg)[0, 0] - model.forward(idx, seg)[0, 0]).max() > 1e-6


def test_state_dict_keys_and_fine_tuning_load(rng):
    pre_cfg = make(n_classes=None)
    pre = randomised(NumpyEncoder(pre_cfg, seed=0, dtype=np.float64), rng)
    assert not any(k.startswith("cls.") for k in pre.params)
    assert "ln_f.weight" not in pre.params and "ln_f.weight" in encoder_param_shapes(make("pre"))
    # torch tensors into NumPy, NumPy arrays into torch: lossless
    t = TorchEncoder(pre_cfg).double()
    t.load_state_dict(pre.state_dict())
    back = NumpyEncoder(pre_cfg, seed=5, dtype=np.float64)
    back.load_state_dict(t.state_dict())
    for k in pre.params:
        assert np.array_equal(back.params[k], pre.params[k]), k
    # fine-tuning: the classifier loads the pre-trained body, keeps its fresh head
    for Model in (NumpyEncoder, TorchEncoder):
        clf = Model(make(n_classes=5), seed=3)
        head_before = to_numpy(clf.state_dict()["cls.weight"]).copy()
        with pytest.raises(ValueError, match=r"missing keys \['cls.bias', 'cls.weight'\]"):
            clf.load_state_dict(pre.state_dict())
        clf.load_state_dict(pre.state_dict(), strict=False)
        sd = clf.state_dict()
        assert np.allclose(to_numpy(sd["blocks.1.mlp.fc.weight"]), pre.params["blocks.1.mlp.fc.weight"],
                           atol=1e-7)
        assert np.array_equal(to_numpy(sd["cls.weight"]), head_before)
        with pytest.raises(ValueError, match="shape mismatches"):
            clf.load_state_dict({"tok_emb.weight": np.zeros((3, 3))}, strict=False)


def test_same_seed_same_weights():
    cfg = make()
    a = NumpyEncoder(cfg, seed=7).state_dict()
    b = TorchEncoder(cfg, seed=7).state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k].numpy()), k
    assert a["tok_emb.weight"].std() == pytest.approx(0.02, rel=0.3)


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_bad_inputs(twin):
    Model = NumpyEncoder if twin == "numpy" else TorchEncoder
    m = Model(make(n_classes=None))
    idx = np.zeros((2, 4), np.int64)
    with pytest.raises(ValueError, match="no classification head"):
        m.class_logits(idx)
    with pytest.raises(ValueError, match="segment_ids must be in"):
        m.forward(idx, np.full((2, 4), 2))
    with pytest.raises(ValueError, match="position 0"):
        m.forward(idx, None, np.array([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="attention_mask shape"):
        m.forward(idx, None, np.ones((2, 3)))
    with pytest.raises(ValueError, match="give mlm_targets"):
        m.loss(idx)
    with pytest.raises(ValueError, match=r"nsp_labels must be in \[0, 2\)"):
        m.loss(idx, nsp_labels=np.array([0, 2]))
    with pytest.raises(ValueError, match="exceeds context_length"):
        m.forward(np.zeros((1, 10), np.int64))
    with pytest.raises(ValueError, match="norm"):
        make(norm="sandwich")


def test_no_chosen_position_gives_zero_mlm_loss(rng):
    model = NumpyEncoder(make(), seed=0, dtype=np.float64)
    idx, seg, mask, _ = batch(rng)
    none = np.full(idx.shape, -100)
    loss, grads = model.loss_and_grads(idx, seg, mask, mlm_targets=none)
    assert loss == 0.0 and not any(g.any() for g in grads.values())
    tl = TorchEncoder(make()).double().loss(idx, seg, mask, mlm_targets=none)
    assert float(tl) == 0.0


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_causal_encoder_pools_the_last_real_token(rng, twin):
    """Causal: position t sees only 0..t, so changing the last real token changes the pooled
    heads but not the hidden state of position 0; padding still changes nothing."""
    cfg = make("post+causal")
    model, tmodel = twins(cfg, rng)
    m = model if twin == "numpy" else tmodel
    idx, seg, mask, _ = batch(rng)
    out = lambda f, i: np.asarray(to_numpy(f(i, seg, mask)))  # noqa: E731
    idx2 = idx.copy()
    idx2[1, 4] = (idx[1, 4] + 1) % (V - 1)  # row 1's last real token (padded after 5)
    h, h2 = out(m.forward, idx), out(m.forward, idx2)
    assert_close(h2[1, :4], h[1, :4], 1e-12, 1e-12, "earlier positions")
    assert np.abs(out(m.class_logits, idx2)[1] - out(m.class_logits, idx)[1]).max() > 1e-6
    idx3 = idx.copy()
    idx3[~mask] = 0
    assert_close(out(m.class_logits, idx3), out(m.class_logits, idx), 1e-12, 1e-12, "padding")
