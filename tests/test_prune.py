"""Pruning: exact sparsities, deterministic ties, structured units, twins agreeing, and masks
that hold through optimiser steps (NumPy AdamW and torch.optim.AdamW, with weight decay).

Independent checks: the unstructured masks against a brute-force ranking with Python's
``sorted`` on (|w|, tensor, index); the structured scores against a per-head loop; a pruned
head or neuron against the model with that unit cut out of the forward (its output must not
change at all).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minilm.numpy.prune as npr
import minilm.torch.prune as tpr
from minilm.config import TransformerConfig
from minilm.numpy.optim import AdamW
from minilm.numpy.transformer import TransformerLM, init_params
from minilm.torch.transformer import TransformerLM as TorchLM


def _config(**kw):
    base = dict(vocab_size=11, context_length=8, d_model=32, n_layer=2, n_head=4)
    base.update(kw)
    return TransformerConfig(**base)


def test_prunable_names():
    p = init_params(_config(tie_weights=False), 0)
    names = npr.prunable_names(p)
    assert "lm_head.weight" in names and "blocks.0.attn.q_proj.weight" in names
    assert not any("emb" in k or "ln" in k or k.endswith(".bias") for k in names)
    assert names == tpr.prunable_names({k: torch.from_numpy(v) for k, v in p.items()})


def _brute_force(params, names, sparsity):
    """The same ranking with Python's sort on (|w|, tensor position, flat index)."""
    items = [(abs(float(v)), t, i) for t, k in enumerate(names) for i, v in enumerate(params[k].reshape(-1))]
    drop = set((t, i) for _, t, i in sorted(items)[: int(sparsity * len(items))])
    return {k: np.array([(t, i) not in drop for i in range(params[k].size)]).reshape(params[k].shape)
            for t, k in enumerate(names)}


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_exact_and_twins(sparsity, scope, rng):
    p = init_params(_config(), 1, np.float64)
    # ties: quantise the values so many magnitudes repeat, some +/- pairs
    p = {k: np.round(v * 200) / 200 for k, v in p.items()}
    names = npr.prunable_names(p)
    m = npr.magnitude_masks(p, sparsity, scope)
    assert list(m) == names
    if scope == "global":
        expect = _brute_force(p, names, sparsity)
        n = sum(p[k].size for k in names)
        assert sum(int((~m[k]).sum()) for k in names) == int(sparsity * n)
    else:
        expect = {}
        for k in names:
            expect.update(_brute_force(p, [k], sparsity))
            assert int((~m[k]).sum()) == int(sparsity * p[k].size)
    for k in names:
        np.testing.assert_array_equal(m[k], expect[k])
    mt = tpr.magnitude_masks({k: torch.from_numpy(v) for k, v in p.items()}, sparsity, scope)
    for k in names:
        np.testing.assert_array_equal(mt[k].numpy(), m[k])
    # what survives is never smaller than what goes (within one ranking)
    if scope == "global" and 0 < sparsity:
        kept = np.concatenate([np.abs(p[k][m[k]]) for k in names])
        gone = np.concatenate([np.abs(p[k][~m[k]]) for k in names])
        assert gone.max() <= kept.min()


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "half", None, True])
def test_bad_sparsity(bad):
    p = init_params(_config(), 0)
    with pytest.raises(ValueError, match=r"sparsity must be .*\[0, 1\)"):
        npr.magnitude_masks(p, bad)
    with pytest.raises(ValueError, match=r"sparsity must be .*\[0, 1\)"):
        tpr.magnitude_masks({k: torch.from_numpy(v) for k, v in p.items()}, bad)
    with pytest.raises(ValueError, match=r"fraction must be"):
        npr.prune_heads(p, _config(), bad)


def test_bad_scope_and_names():
    p = init_params(_config(), 0)
    with pytest.raises(ValueError, match="scope"):
        npr.magnitude_masks(p, 0.5, scope="row")
    with pytest.raises(ValueError, match="not among"):
        npr.magnitude_masks(p, 0.5, names=["nope.weight"])


def test_head_importance_matches_loop():
    cfg = _config()
    p = init_params(cfg, 2, np.float64)
    s = npr.head_importance(p, cfg)
    D = cfg.head_dim
    for i in range(cfg.n_layer):
        a = f"blocks.{i}.attn."
        for h in range(cfg.n_head):
            rows = slice(h * D, (h + 1) * D)
            parts = [p[a + f"{x}_proj.weight"][rows] for x in "qkv"] + [p[a + f"{x}_proj.bias"][rows] for x in "qkv"]
            parts.append(p[a + "o_proj.weight"][:, rows])
            assert np.isclose(s[i, h], np.sqrt(sum((x ** 2).sum() for x in parts)))
    torch_s = tpr.head_importance({k: torch.from_numpy(v) for k, v in p.items()}, cfg)
    np.testing.assert_allclose(torch_s.numpy(), s, rtol=1e-12)


def _forward_without_heads(model, idx, drop):
    """Reference: the float model with the dropped heads' outputs removed by hand (zeroing
    just the o_proj columns, nothing else)."""
    cfg = model.config
    saved = {k: v.copy() for k, v in model.params.items()}
    D = cfg.head_dim
    for i, h in zip(*np.nonzero(drop)):
        model.params[f"blocks.{i}.attn.o_proj.weight"][:, h * D:(h + 1) * D] = 0
    out = model(idx)
    for k, v in saved.items():
        model.params[k][...] = v
    return out


@pytest.mark.parametrize("cfg_kw", [{}, dict(n_kv_head=2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_heads(cfg_kw, scope, rng):
    cfg = _config(**cfg_kw)
    model = TransformerLM(cfg, 4, np.float64)
    scores = npr.head_importance(model.params, cfg)
    masks = npr.prune_heads(model.params, cfg, 0.5, scope)
    drop = np.zeros(scores.shape, dtype=bool)
    for i in range(cfg.n_layer):
        rows = masks[f"blocks.{i}.attn.q_proj.bias"].reshape(cfg.n_head, cfg.head_dim)
        assert (rows.all(axis=1) | ~rows.any(axis=1)).all()  # whole heads only
        drop[i] = ~rows.all(axis=1)
    assert drop.sum() == cfg.n_layer * cfg.n_head // 2
    if scope == "layer":
        assert (drop.sum(axis=1) == cfg.n_head // 2).all()
    assert scores[drop].max() <= scores[~drop].min() or scope == "layer"
    if cfg.n_kv_head != cfg.n_head:
        assert not any("k_proj" in k or "v_proj" in k for k in masks)  # shared k/v stay
    idx = rng.integers(0, cfg.vocab_size, (2, 8))
    expect = _forward_without_heads(model, idx, drop)
    masks.apply(model.params)
    np.testing.assert_allclose(model(idx), expect, rtol=1e-12, atol=1e-12)
    tm = tpr.prune_heads({k: torch.from_numpy(v) for k, v in init_params(cfg, 4, np.float64).items()},
                         cfg, 0.5, scope)
    for k in masks:
        np.testing.assert_array_equal(tm[k].numpy(), masks[k])


def test_prune_neurons(rng):
    cfg = _config()
    model = TransformerLM(cfg, 5, np.float64)
    scores = npr.neuron_importance(model.params, cfg)
    masks = npr.prune_neurons(model.params, cfg, 0.25)
    keep = np.stack([masks[f"blocks.{i}.mlp.fc.bias"] for i in range(cfg.n_layer)])
    assert (~keep).sum() == int(0.25 * keep.size)
    assert scores[~keep].max() <= scores[keep].min()
    idx = rng.integers(0, cfg.vocab_size, (2, 8))
    # reference: cut the neurons out of the MLP by slicing the matrices (a smaller dense model)
    small = {k: v.copy() for k, v in model.params.items()}
    masks.apply(model.params)
    pruned = model(idx)
    for i in range(cfg.n_layer):
        m = f"blocks.{i}.mlp."
        small[m + "proj.weight"][:, ~keep[i]] = 0  # only the output columns: GELU(h) of those is unused
    ref = TransformerLM(cfg, 0, np.float64)
    ref.load_state_dict(small)
    np.testing.assert_allclose(pruned, ref(idx), rtol=1e-12, atol=1e-12)
    tm = tpr.prune_neurons({k: torch.from_numpy(v) for k, v in small.items()}, cfg, 0.25)
    assert set(tm) == set(masks)


def _batch(cfg, step):
    r = np.random.default_rng(100 + step)
    x = r.integers(0, cfg.vocab_size, (4, 8))
    return x, (x + 1) % cfg.vocab_size


def test_masks_hold_through_adamw_numpy():
    """After unpruned steps (AdamW moments non-zero), prune, then N steps with weight decay:
    with the masks applied the pruned weights are exactly 0; without re-masking after the
    step (gradients masked only) the old momentum moves them (the broken variant)."""
    cfg = _config()
    for remask in (True, False):
        model = TransformerLM(cfg, 0, np.float64)
        opt = AdamW(model.params, lr=1e-2, weight_decay=0.1)
        for s in range(3):
            _, g = model.loss_and_grads(*_batch(cfg, s))
            opt.step(g)
        masks = npr.magnitude_masks(model.params, 0.5)
        masks.apply(model.params)
        for s in range(3, 8):
            _, g = model.loss_and_grads(*_batch(cfg, s))
            masks.mask_grads(g)
            opt.step(g)
            if remask:
                masks.apply(model.params)
        pruned = np.concatenate([model.params[k][~m] for k, m in masks.items()])
        if remask:
            assert np.all(pruned == 0)
        else:
            assert np.any(pruned != 0)


def test_masks_hold_through_adamw_torch():
    cfg = _config()
    for remask in (True, False):
        model = TorchLM(cfg, seed=0, attention="naive").double()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        for s in range(3):
            opt.zero_grad()
            model.loss(*map(torch.from_numpy, _batch(cfg, s))).backward()
            opt.step()
        masks = tpr.magnitude_masks(model, 0.5)
        masks.apply(model)
        for s in range(3, 8):
            opt.zero_grad()
            model.loss(*map(torch.from_numpy, _batch(cfg, s))).backward()
            masks.mask_grads(model)
            opt.step()
            if remask:
                masks.apply(model)
        params = dict(model.named_parameters())
        pruned = torch.cat([params[k].detach()[~m] for k, m in masks.items()])
        assert bool((pruned == 0).all()) == remask


def test_finetune_twins():
    """Both twins' fine-tuning keep the masks and take the same steps (float64)."""
    cfg = _config()
    p = init_params(cfg, 7, np.float64)
    nm = TransformerLM(cfg, 0, np.float64)
    nm.load_state_dict(p)
    tm = TorchLM(cfg, seed=0, attention="naive").double()
    tm.load_state_dict(p)
    masks = npr.magnitude_masks(p, 0.5) & npr.prune_heads(p, cfg, 0.25)
    tmasks = tpr.Masks({k: torch.from_numpy(v) for k, v in masks.items()})
    batches = lambda s: _batch(cfg, s)  # noqa: E731
    ln = npr.finetune(nm, masks, batches, 6, lr=3e-3)
    lt = tpr.finetune(tm, tmasks, batches, 6, lr=3e-3)
    np.testing.assert_allclose(lt, ln, rtol=1e-9)
    assert ln[-1] < ln[0]
    for k, m in masks.items():
        assert np.all(nm.params[k][~m] == 0)
        np.testing.assert_allclose(tm.state_dict()[k].numpy(), nm.params[k], rtol=1e-8, atol=1e-10)
