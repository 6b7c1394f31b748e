"""The NumPy optimisers against torch.optim, step for step, in float64.

Every test drives the NumPy optimiser and its torch counterpart with the same random
parameters and the same sequence of random gradients and compares the parameters after every
step (and the optimiser state at the end).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minilm.numpy.optim import SGD, AdamW, clip_grad_norm, cosine_schedule
from minilm.testing import assert_close

SHAPES = {"w": (5, 3), "b": (3,), "emb": (7, 4), "scalar": ()}


def _params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _grad_seq(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    # scales differ per step so the adaptive moments see something non-trivial
    return [{k: rng.standard_normal(s) * 10.0 ** rng.uniform(-2, 1) for k, s in SHAPES.items()}
            for _ in range(n)]


def _torch_params(params: dict[str, np.ndarray]) -> dict[str, torch.nn.Parameter]:
    return {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in params.items()}


def _run_pair(np_opt, t_opt, np_params, t_params, grads, lrs=None):
    for i, g in enumerate(grads):
        if lrs is not None:
            np_opt.lr = lrs[i]
            for group in t_opt.param_groups:
                group["lr"] = lrs[i]
        for k, p in t_params.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        t_opt.step()
        np_opt.step({k: v.copy() for k, v in g.items()})
        for k in np_params:
            assert_close(np_params[k], t_params[k], atol=1e-13, rtol=1e-12, name=f"step {i + 1} {k}")


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.1), (0.5, 0.01)])
def test_sgd_matches_torch(rng, momentum, weight_decay):
    params = _params(rng)
    t_params = _torch_params(params)
    opt = SGD(params, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    t_opt = torch.optim.SGD(t_params.values(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    _run_pair(opt, t_opt, params, t_params, _grad_seq(rng, 10))
    if momentum:
        for k, p in t_params.items():
            assert_close(opt.state[k]["momentum_buffer"], t_opt.state[p]["momentum_buffer"],
                         atol=1e-13, rtol=1e-12, name=f"momentum buffer {k}")


@pytest.mark.parametrize("betas, eps, weight_decay", [
    ((0.9, 0.999), 1e-8, 0.01),
    ((0.8, 0.95), 1e-6, 0.1),
    ((0.0, 0.5), 1e-3, 0.0),
    ((0.99, 0.0), 0.0, 0.5),
])
def test_adamw_matches_torch(rng, betas, eps, weight_decay):
    params = _params(rng)
    t_params = _torch_params(params)
    opt = AdamW(params, lr=3e-2, betas=betas, eps=eps, weight_decay=weight_decay)
    t_opt = torch.optim.AdamW(t_params.values(), lr=3e-2, betas=betas, eps=eps,
                              weight_decay=weight_decay)
    # a changing learning rate, as the schedule gives, exercises the .lr setter
    lrs = [cosine_schedule(s, 3e-2, 3e-3, 3, 10) for s in range(10)]
    _run_pair(opt, t_opt, params, t_params, _grad_seq(rng, 10), lrs)
    for k, p in t_params.items():
        assert_close(opt.state[k]["exp_avg"], t_opt.state[p]["exp_avg"], atol=1e-13, rtol=1e-12)
        assert_close(opt.state[k]["exp_avg_sq"], t_opt.state[p]["exp_avg_sq"], atol=1e-13, rtol=1e-12)
        assert opt.step_count == int(t_opt.state[p]["step"]) == 10


def test_adamw_param_groups_match_torch(rng):
    """Decay on matrices only plus a group with its own lr and betas, as in nanoGPT."""
    params = _params(rng)
    t_params = _torch_params(params)
    decay = {k: v for k, v in params.items() if v.ndim >= 2}
    no_decay = {k: v for k, v in params.items() if v.ndim < 2}
    opt = AdamW([{"params": decay, "weight_decay": 0.2},
                 {"params": no_decay, "weight_decay": 0.0, "betas": (0.5, 0.9)}],
                lr=1e-2, weight_decay=0.05)
    t_opt = torch.optim.AdamW(
        [{"params": [t_params[k] for k in decay], "weight_decay": 0.2},
         {"params": [t_params[k] for k in no_decay], "weight_decay": 0.0, "betas": (0.5, 0.9)}],
        lr=1e-2, weight_decay=0.05)
    assert opt.param_groups[1]["betas"] == (0.5, 0.9) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    _run_pair(opt, t_opt, params, t_params, _grad_seq(rng, 10), lrs=[1e-2 * 0.9**i for i in range(10)])
    assert all(g["lr"] == pytest.approx(1e-2 * 0.9**9) for g in opt.param_groups)


def test_sgd_param_groups_match_torch(rng):
    params = _params(rng)
    t_params = _torch_params(params)
    a = {"w": params["w"], "b": params["b"]}
    b = {"emb": params["emb"], "scalar": params["scalar"]}
    opt = SGD([{"params": a, "momentum": 0.9}, {"params": b, "lr": 0.3, "weight_decay": 0.1}], lr=0.01)
    t_opt = torch.optim.SGD([{"params": [t_params["w"], t_params["b"]], "momentum": 0.9},
                             {"params": [t_params["emb"], t_params["scalar"]], "lr": 0.3,
                              "weight_decay": 0.1}], lr=0.01)
    _run_pair(opt, t_opt, params, t_params, _grad_seq(rng, 10))


def test_updates_live_arrays_in_place(rng):
    params = _params(rng)
    ids = {k: id(v) for k, v in params.items()}
    before = {k: v.copy() for k, v in params.items()}
    AdamW(params, lr=0.1).step(_grad_seq(rng, 1)[0])
    assert {k: id(v) for k, v in params.items()} == ids
    assert all(not np.array_equal(params[k], before[k]) for k in params)


def test_float32_params_stay_float32_and_match_torch(rng):
    params = {k: v.astype(np.float32) for k, v in _params(rng).items()}
    t_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = AdamW(params, lr=1e-2)
    t_opt = torch.optim.AdamW(t_params.values(), lr=1e-2)
    for g in _grad_seq(rng, 5):
        g = {k: v.astype(np.float32) for k, v in g.items()}
        for k, p in t_params.items():
            p.grad = torch.tensor(g[k])
        t_opt.step()
        opt.step(g)
    for k in params:
        assert params[k].dtype == np.float32 and opt.state[k]["exp_avg"].dtype == np.float32
        assert_close(params[k], t_params[k], atol=1e-6, rtol=1e-5, name=k)


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda p: AdamW([{"params": {"w": p["w"], "emb": p["emb"]}},
                     {"params": {"b": p["b"], "scalar": p["scalar"]}, "weight_decay": 0.0}],
                    lr=0.05, betas=(0.8, 0.99)),
], ids=["sgd", "adamw"])
def test_state_dict_round_trip_resumes_exactly(rng, make):
    """Save after k steps, load into a fresh optimiser, continue: bit-identical to no break."""
    init = _params(rng)
    grads = _grad_seq(rng, 8)
    lrs = [cosine_schedule(s, 0.05, 0.005, 2, 8) for s in range(8)]

    ref = {k: v.copy() for k, v in init.items()}
    opt = make(ref)
    for g, lr in zip(grads, lrs):
        opt.lr = lr
        opt.step(g)

    first = {k: v.copy() for k, v in init.items()}
    opt1 = make(first)
    for g, lr in zip(grads[:3], lrs[:3]):
        opt1.lr = lr
        opt1.step(g)
    saved = opt1.state_dict()
    weights_at_save = {k: v.copy() for k, v in first.items()}  # the model checkpoint's part

    # plain data only: arrays, numbers, strings, lists, dicts with str keys
    def walk(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and walk(v) for k, v in x.items())
        if isinstance(x, list):
            return all(walk(v) for v in x)
        return isinstance(x, (np.ndarray, int, float, str))
    assert walk(saved)
    opt1.step(grads[3])  # the saved state is a copy: stepping on does not change it

    resumed = weights_at_save
    opt2 = make(resumed)
    opt2.lr = 123.0  # overwritten by load_state_dict, as torch restores group options
    opt2.load_state_dict(saved)
    assert opt2.lr == lrs[2] and opt2.step_count == 3
    for g, lr in zip(grads[3:], lrs[3:]):
        opt2.lr = lr
        opt2.step(g)
    for k in ref:
        np.testing.assert_array_equal(resumed[k], ref[k], err_msg=k)


def test_load_state_dict_rejects_mismatch(rng):
    params = _params(rng)
    opt = AdamW(params, lr=0.1)
    opt.step(_grad_seq(rng, 1)[0])
    sd = opt.state_dict()
    other = AdamW({"w": params["w"].copy()}, lr=0.1)
    with pytest.raises(ValueError, match="param groups|holds"):
        other.load_state_dict(sd)
    bad = opt.state_dict()
    bad["state"]["w"]["exp_avg"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"w\.exp_avg has shape \(2, 2\)"):
        AdamW(_params(rng), lr=0.1).load_state_dict(bad)
    bad = opt.state_dict()
    del bad["state"]["b"]
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        AdamW(_params(rng), lr=0.1).load_state_dict(bad)


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clip_grad_norm_matches_torch(rng, max_norm):
    grads = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    ts = [torch.nn.Parameter(torch.tensor(v)) for v in grads.values()]
    for t, g in zip(ts, grads.values()):
        t.grad = torch.tensor(g.copy())
    before = {k: v.copy() for k, v in grads.items()}
    expected_norm = math.sqrt(sum(float((v**2).sum()) for v in grads.values()))
    t_norm = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    norm = clip_grad_norm(grads, max_norm)
    assert isinstance(norm, float)
    assert norm == pytest.approx(expected_norm, rel=1e-13)
    assert norm == pytest.approx(float(t_norm), rel=1e-13)
    for (k, g), t in zip(grads.items(), ts):
        assert_close(g, t.grad, atol=1e-15, rtol=1e-13, name=k)
    if max_norm > expected_norm:  # no clipping: the gradients are untouched
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k])
    else:  # clipped to (just under, by the 1e-6 epsilon) max_norm
        new = math.sqrt(sum(float((v**2).sum()) for v in grads.values()))
        assert new == pytest.approx(max_norm * expected_norm / (expected_norm + 1e-6), rel=1e-12)


def test_clip_grad_norm_known_answer_and_nonfinite():
    """||(3, 4)|| = 5, so max_norm 1 scales by 1 / (5 + 1e-6)."""
    g = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(g, 1.0) == 5.0
    assert g["a"][0] == pytest.approx(3 / (5 + 1e-6), rel=1e-15)
    g = [np.array([1.0, np.inf])]
    with pytest.raises(ValueError, match="inf"):
        clip_grad_norm(g, 1.0, error_if_nonfinite=True)
    g = [np.array([1.0, np.nan])]
    assert math.isnan(clip_grad_norm(g, 1.0))
    assert np.isnan(g[0]).all()  # propagates, as torch does by default


def test_cosine_schedule_known_values():
    """Worked by hand from the formula in the docstring, max 1.0, min 0.1, warm-up 4, total 14.

    step 0: 1 * 1/5 = 0.2; step 3: 4/5 = 0.8; step 4: r = 0, cos 0 = 1 -> 1.0;
    step 9: r = 5/10, cos(pi/2) = 0 -> 0.1 + 0.9/2 = 0.55; step 14: r = 1, cos(pi) = -1 -> 0.1;
    step 6: r = 0.2, (1 + cos(0.2 pi))/2 = 0.904508... -> 0.1 + 0.9 * 0.904508 = 0.914058;
    after the end (15, 100): the floor 0.1.
    """
    f = lambda s: cosine_schedule(s, 1.0, 0.1, 4, 14)  # noqa: E731
    assert f(0) == pytest.approx(0.2)
    assert f(3) == pytest.approx(0.8)
    assert f(4) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * (1 + math.cos(0.2 * math.pi)) / 2)
    assert f(6) == pytest.approx(0.9140576, abs=1e-7)
    assert f(9) == pytest.approx(0.55)
    assert f(14) == pytest.approx(0.1)
    assert f(15) == f(100) == 0.1
    lrs = [f(s) for s in range(20)]
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5]))  # rises during warm-up
    assert all(a > b for a, b in zip(lrs[4:14], lrs[5:15]))  # falls during decay
    # no warm-up: starts at max_lr; no decay phase: min_lr after the warm-up
    assert cosine_schedule(0, 2.0, 0.0, 0, 10) == 2.0
    assert cosine_schedule(5, 2.0, 0.5, 5, 5) == 0.5


@pytest.mark.parametrize("make, match", [
    (lambda p: SGD(p, lr=-0.1), "lr"),
    (lambda p: SGD(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1.0), "weight_decay"),
    (lambda p: AdamW(p, lr=-1e-3), "lr"),
    (lambda p: AdamW(p, lr=float("nan")), "lr"),
    (lambda p: AdamW(p, lr=1e-3, betas=(1.0, 0.999)), "beta1"),
    (lambda p: AdamW(p, lr=1e-3, betas=(0.9, -0.1)), "beta2"),
    (lambda p: AdamW(p, lr=1e-3, betas=(0.9,)), "betas"),
    (lambda p: AdamW(p, lr=1e-3, eps=-1e-8), "eps"),
    (lambda p: AdamW(p, lr=1e-3, weight_decay=-0.1), "weight_decay"),
    (lambda p: AdamW([{"params": p, "momentum": 0.9}], lr=1e-3), "unknown options"),
    (lambda p: AdamW([{"params": p}, {"params": {"w": p["w"]}}], lr=1e-3), "more than one group"),
    (lambda p: AdamW({"w": [1.0, 2.0]}, lr=1e-3), "NumPy array"),
    (lambda p: AdamW({"i": np.arange(3)}, lr=1e-3), "floating-point"),
    (lambda p: AdamW([], lr=1e-3), "empty"),
])
def test_bad_hyper_parameters(rng, make, match):
    with pytest.raises(ValueError, match=match):
        make(_params(rng))


def test_bad_grads_and_lr(rng):
    params = _params(rng)
    opt = AdamW(params, lr=1e-3)
    grads = {k: np.zeros(s) for k, s in SHAPES.items()}
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        opt.step({k: v for k, v in grads.items() if k != "b"})
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        opt.step({**grads, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"grad 'w' has shape \(3, 5\).*\(5, 3\)"):
        opt.step({**grads, "w": np.zeros((3, 5))})
    assert opt.step_count == 0  # nothing happened
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, 0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(0, 1.0, 0.1, -1, 10)
    with pytest.raises(ValueError, match="min_lr"):
        cosine_schedule(0, 1.0, 2.0, 1, 10)


def test_load_state_dict_takes_half_precision_tensors(rng):
    """Buffers saved as torch bfloat16/float16 tensors load (widened exactly to float32, then
    cast to the parameter dtype); NumPy has no bfloat16, so ``tensor.numpy()`` alone fails."""
    torch = pytest.importorskip("torch")
    params = _params(rng)
    opt = AdamW(params, lr=0.1)
    opt.step(_grad_seq(rng, 1)[0])
    sd = opt.state_dict()
    for dtype in (torch.bfloat16, torch.float16):
        half = {**sd, "state": {name: {k: torch.from_numpy(b).to(dtype) for k, b in s.items()}
                                for name, s in sd["state"].items()}}
        other = AdamW({k: v.copy() for k, v in params.items()}, lr=0.1)
        other.load_state_dict(half)
        for name, s in half["state"].items():
            for k, b in s.items():
                np.testing.assert_array_equal(other.state[name][k], b.float().numpy())
