"""Checks of assignment 'sampling' (chapter 13): top-k and top-p filters, inverse-CDF sampling
and the temperature, against torch (torch.topk, a sorted cumulative sum, torch.searchsorted)
and the PyTorch twin minilm.torch.generate.next_token fed the same uniforms."""

from __future__ import annotations

import numpy as np

from minilm.classroom.checks import array, check, close, rng


def _logits(seed, N=4, V=11, scale=2.0):
    return rng(seed).standard_normal((N, V)) * scale


def _kept(x):
    return np.isfinite(np.asarray(x, dtype=np.float64))


def _ref_top_k(z, k):
    import torch

    t = torch.tensor(z)
    vals, idx = torch.topk(t, min(k, z.shape[-1]), dim=-1)
    keep = torch.zeros_like(t, dtype=torch.bool).scatter_(-1, idx, True)
    return torch.where(keep, t, -torch.inf).numpy()


def _ref_top_p(z, p):
    import torch

    t = torch.tensor(z)
    probs = torch.softmax(t, -1)
    sp, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = (torch.cumsum(sp, -1) - sp) < p  # the mass ranked before a token is below p
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return torch.where(keep, t, -torch.inf).numpy()


def _filter(fn, z, arg, name):
    out = fn(z.copy(), arg)
    return array(out, z.shape, name)


def top_k(s):
    z = _logits(0)
    for k in (1, 3, 10):
        got = _filter(s.generate.top_k_filter, z, k, f"top_k_filter(logits, {k})")
        ref = _ref_top_k(z, k)
        check((_kept(got) == _kept(ref)).all(), f"top_k_filter(k={k}) keeps tokens {np.flatnonzero(_kept(got)[0]).tolist()} "
              f"of row 0, expected {np.flatnonzero(_kept(ref)[0]).tolist()}")
        close(np.where(_kept(got), got, 0), np.where(_kept(ref), ref, 0), f"kept logits (k={k})")


def top_k_edges(s):
    z = np.array([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    got = _filter(s.generate.top_k_filter, z, 2, "top_k_filter")
    want = np.array([[False, True, True, False], [True, True, False, False]])
    check((_kept(got) == want).all(), f"top_k_filter with ties at the k-th place must keep exactly k tokens, "
          f"the lowest ids: kept {_kept(got).astype(int).tolist()}, expected {want.astype(int).tolist()}")
    got = _filter(s.generate.top_k_filter, z, 100, "top_k_filter")
    check(_kept(got).all(), "top_k_filter with k > V keeps every token")


def top_p(s):
    z = _logits(1, N=6, V=9)
    for p in (0.3, 0.75, 0.9):
        got = _filter(s.generate.top_p_filter, z, p, f"top_p_filter(logits, {p})")
        ref = _ref_top_p(z, p)
        bad = np.flatnonzero((_kept(got) != _kept(ref)).any(-1))
        if len(bad):
            r = int(bad[0])
            raise AssertionError(f"top_p_filter(p={p}) row {r} keeps {int(_kept(got)[r].sum())} tokens, expected "
                                 f"{int(_kept(ref)[r].sum())} (keep the fewest most-probable tokens whose mass "
                                 f"reaches p: token j is kept if the mass ranked before it is < p)")


def top_p_edges(s):
    probs = np.array([[0.1, 0.5, 0.15, 0.25]])
    z = np.log(probs)
    got = _filter(s.generate.top_p_filter, z, 0.7, "top_p_filter")
    check(_kept(got).tolist() == [[False, True, False, True]], f"probabilities (0.1, 0.5, 0.15, 0.25) with p=0.7 must "
          f"keep tokens 1 and 3 (0.5 + 0.25 >= 0.7), kept {np.flatnonzero(_kept(got)[0]).tolist()}")
    got = _filter(s.generate.top_p_filter, z, 1.0, "top_p_filter")
    check(_kept(got).all(), "top_p_filter with p=1 keeps every token")
    got = _filter(s.generate.top_p_filter, z, 1e-9, "top_p_filter")
    check(_kept(got).tolist() == [[False, True, False, False]], "top_p_filter with a tiny p keeps only the most probable token")


def sample(s):
    import torch

    r = rng(2)
    probs = r.random((200, 7)) ** 3
    probs[:, 2] = 0.0
    u = r.random(200)
    got = array(s.generate.sample_from_probs(probs, u), (200,), "sample_from_probs")
    cdf = torch.tensor(np.cumsum(probs, -1) / probs.sum(-1, keepdims=True))
    want = torch.searchsorted(cdf, torch.tensor(u)[:, None], right=True)[:, 0].numpy()
    check(np.issubdtype(got.dtype, np.integer), f"sample_from_probs must return integer ids, got {got.dtype}")
    check((got == want).all(), f"sample_from_probs: {int((got != want).sum())} of 200 draws differ from the "
          f"inverse CDF (token i with CDF_(i-1) <= u < CDF_i)")
    check(not (got == 2).any(), "a token of probability 0 was drawn")


def sample_edges(s):
    probs = np.array([[0.2, 0.0, 0.8], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    for u, want in ((0.0, [0, 2, 0]), (0.2, [2, 2, 0]), (0.9999999, [2, 2, 1]), (0.5, [2, 2, 1])):
        got = s.generate.sample_from_probs(probs, np.full(3, u))
        check(np.asarray(got).tolist() == want, f"sample_from_probs(u={u}) = {np.asarray(got).tolist()}, expected {want} "
              f"(rows need not sum to 1; zero-probability tokens are never drawn)")


def _next(s, logits, u, temperature, top_k=None, top_p=None):
    import torch

    from minilm.torch.generate import next_token as twin

    got = s.generate.next_token(logits.copy(), u, temperature=temperature, top_k=top_k, top_p=top_p)
    got = array(got, (logits.shape[0],), "next_token")
    want = twin(torch.tensor(logits), torch.tensor(u), temperature=temperature, top_k=top_k, top_p=top_p).numpy()
    diff = int((got != want).sum())
    check(diff == 0, f"next_token(temperature={temperature}, top_k={top_k}, top_p={top_p}): {diff} of {len(u)} "
          f"tokens differ from the PyTorch twin fed the same uniforms")


def temperature(s):
    r = rng(3)
    logits = r.standard_normal((300, 8)) * 2
    u = r.random(300)
    for t in (1.0, 0.5, 2.0):
        _next(s, logits, u, t)


def greedy(s):
    logits = np.array([[0.0, 2.0, 2.0, -1.0], [5.0, 1.0, 0.0, 0.0]])
    got = s.generate.next_token(logits, np.array([0.99, 0.99]), temperature=0.0, top_k=None, top_p=None)
    check(np.asarray(got).tolist() == [1, 0], f"temperature 0 is greedy (ties: lowest id): got {np.asarray(got).tolist()}, expected [1, 0]")


def tiny_temperature(s):
    r = rng(4)
    logits = r.standard_normal((50, 6)) * 100
    u = r.random(50)
    with np.errstate(all="ignore"):
        _next(s, logits, u, 1e-4)


def combined(s):
    r = rng(5)
    logits = r.standard_normal((300, 10)) * 1.5
    u = r.random(300)
    _next(s, logits, u, 0.8, top_k=5)
    _next(s, logits, u, 1.3, top_p=0.6)
    _next(s, logits, u, 0.9, top_k=4, top_p=0.8)
