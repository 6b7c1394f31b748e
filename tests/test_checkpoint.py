"""Checkpoints: round trips, atomic writes, clear errors, no unpickling, exact resume.

The exact-resume tests train a tiny model for N steps in one go, and again stopped at step k
(Ctrl-C simulated by a callback raising KeyboardInterrupt after step k) and resumed from the
checkpoint; the losses of steps k+1..N and the final weights must be bit-identical.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from minilm.checkpoint import (
    CheckpointError,
    atomic_write,
    find_checkpoint,
    load_checkpoint,
    load_run,
    save_checkpoint,
)
from minilm.presets import get_preset

torch = pytest.importorskip("torch")


def _tree():
    rng = np.random.default_rng(0)
    return {
        "model": {"tok_emb.weight": rng.standard_normal((5, 3)), "ln.bias": np.zeros(3, np.float32)},
        "optim": {"state": {0: {"step": np.array(3.0), "exp_avg": np.ones((2, 2))}},
                  "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0, 1]}]},
        "ints": np.arange(4, dtype=np.int64),
        "nothing": None,
    }


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_round_trip_keeps_values_dtypes_shapes_and_structure(tmp_path, suffix):
    tree = _tree()
    meta = {"framework": "numpy", "step": 7, "rng": np.random.default_rng(3).bit_generator.state}
    save_checkpoint(tmp_path / f"checkpoint{suffix}", meta, tree)
    ck = load_checkpoint(tmp_path)  # a run folder finds its checkpoint
    assert ck.step == 7 and ck.meta["rng"] == meta["rng"]
    as_np = (lambda a: a.numpy()) if suffix == ".pt" else np.asarray
    for k, v in tree["model"].items():
        got = as_np(ck.state["model"][k])
        assert got.dtype == v.dtype and got.shape == v.shape
        np.testing.assert_array_equal(got, v)
    step = as_np(ck.state["optim"]["state"][0]["step"])
    assert step.shape == () and step == 3.0  # 0-d stays 0-d; int keys stay ints
    assert ck.state["optim"]["param_groups"][0]["betas"] == (0.9, 0.99)  # tuples stay tuples
    assert ck.state["nothing"] is None
    rng = np.random.default_rng()
    rng.bit_generator.state = ck.meta["rng"]
    assert rng.random() == np.random.default_rng(3).random()


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_crash_mid_write_leaves_old_checkpoint_intact(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"checkpoint{suffix}"
    save_checkpoint(path, {"framework": "numpy", "step": 1}, _tree())
    before = path.read_bytes()

    def crashing_writer(f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then the crash
        raise OSError("disk full (simulated)")

    if suffix == ".npz":
        monkeypatch.setattr(np, "savez", crashing_writer)
    else:
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: crashing_writer(f))
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"framework": "numpy", "step": 2}, _tree())
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write(p, lambda f: f.write(b"one"))
    atomic_write(p, lambda f: f.write(b"two"))
    assert p.read_bytes() == b"two" and len(list(tmp_path.iterdir())) == 1


def test_missing_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=str(tmp_path)) as e:
        find_checkpoint(tmp_path)  # an empty run folder
    assert "checkpoint.pt or checkpoint.npz" in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_corrupt_checkpoints_error_names_the_file(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    save_checkpoint(good, {"framework": "numpy", "step": 1}, _tree())
    data = good.read_bytes()
    cases = {
        f"truncated{suffix}": data[: len(data) // 2],
        f"garbage{suffix}": b"\x00not a checkpoint at all" * 10,
        f"empty{suffix}": b"",
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(p)
        assert name in str(e.value), str(e.value)


def test_npz_without_meta_or_wrong_format_is_refused(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, x=np.ones(3))
    with pytest.raises(CheckpointError, match="plain.npz"):
        load_checkpoint(p)
    q = tmp_path / "other.npz"
    meta = np.frombuffer(json.dumps({"format": "something-else"}).encode(), np.uint8)
    np.savez(q, __meta__=meta)
    with pytest.raises(CheckpointError, match="not a minilm checkpoint"):
        load_checkpoint(q)


class _Evil:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_npz_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "checkpoint.npz"
    save_checkpoint(p, {"framework": "numpy", "step": 1}, _tree())
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/evil"] = np.array([_Evil(str(marker))], dtype=object)  # stored with pickle
    np.savez(p, **arrays)
    with pytest.raises(CheckpointError, match="checkpoint.npz") as e:
        load_checkpoint(p)
    assert "pickle" in str(e.value).lower()
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "checkpoint.pt"
    meta = torch.from_numpy(np.frombuffer(json.dumps({"format": "minilm-checkpoint", "version": 1,
                                                      "step": 0, "state": {}}).encode(), np.uint8).copy())
    torch.save({"__meta__": meta, "arrays": {"x": _Evil(str(marker))}}, p)
    with pytest.raises(CheckpointError, match="checkpoint.pt") as e:
        load_checkpoint(p)
    assert str(e.value) == (f"{p}: not a minilm checkpoint (it holds objects other than tensors "
                            f"and plain data, which minilm never unpickles)")
    assert not marker.exists()
    # and a plain pickle renamed .pt is refused too
    q = tmp_path / "plain.pt"
    q.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(CheckpointError, match="plain.pt"):
        load_checkpoint(q)
    assert not marker.exists()


@pytest.mark.filterwarnings("error")  # nor any of torch's warnings
@pytest.mark.parametrize("content", ["pickle", "evil pickle", "torch object", "text", "other zip"])
def test_pt_refusals_are_short_and_never_advise_weights_only_false(tmp_path, content):
    """torch's own message for a refused object says that retrying with weights_only=False
    "will likely succeed": the one thing a user must not do with a stranger's file. Our
    message names the file, says what is wrong in one short line, and passes none of that on."""
    import zipfile

    p = tmp_path / "bad.pt"
    if content == "pickle":
        p.write_bytes(pickle.dumps({"a": [1, 2]}))
    elif content == "evil pickle":
        p.write_bytes(pickle.dumps(_Evil(str(tmp_path / "pwned"))))
    elif content == "torch object":
        torch.save({"x": _Evil(str(tmp_path / "pwned"))}, p)
    elif content == "text":
        p.write_text("hello, I am text\n")
    else:
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("notes.txt", "a zip that torch did not write")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: not a ") and "\n" not in msg and len(msg) < len(str(p)) + 130, msg
    assert "weights_only" not in msg and "Weights only" not in msg and "\x1b" not in msg, msg
    if content == "torch object":
        assert "never unpickles" in msg
    else:
        assert "torch checkpoint file" in msg
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# Exact resume, both twins


def _train_fn(impl):
    if impl == "numpy":
        from minilm.numpy.train import train
    else:
        from minilm.torch.train import train
    return train


class _StopAt:
    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, step: int, loss: float) -> None:
        if step == self.k:
            raise KeyboardInterrupt  # what Ctrl-C does, after step k completed


def _weights(path):
    return {k: np.asarray(v) for k, v in load_checkpoint(path).state["model"].items()}


@pytest.mark.parametrize("impl,preset,overrides", [
    ("numpy", "tiny", {}), ("torch", "tiny", {}), ("numpy", "tiny-lstm", {}), ("torch", "tiny-lstm", {}),
    # dropout draws from torch's generator, which the checkpoint must carry (torch_rng); the
    # LSTM applies dropout between layers, so it needs two
    ("torch", "tiny", {"dropout": 0.2}), ("torch", "tiny-lstm", {"dropout": 0.2, "n_layer": 2}),
], ids=["numpy-tiny", "torch-tiny", "numpy-tiny-lstm", "torch-tiny-lstm", "torch-tiny-dropout",
        "torch-tiny-lstm-dropout"])
def test_resume_is_bit_identical(tmp_path, impl, preset, overrides):
    # eval/checkpoint every 4 steps; stop at 6 (between checkpoints) and resume from there
    args = get_preset(preset, impl=impl, steps=12, eval_interval=4, sample_tokens=5, **overrides)
    train = _train_fn(impl)
    whole = train(args, tmp_path / "whole", progress=False, print_fn=lambda s: None)
    part = train(args, tmp_path / "part", progress=False, print_fn=lambda s: None, callback=_StopAt(6))
    assert part.interrupted and part.step == 6 and part.checkpoint is not None
    assert part.losses == whole.losses[:6]
    rest = train(args, tmp_path / "part", resume=True, progress=False, print_fn=lambda s: None)
    assert rest.first_step == 6 and rest.step == 12
    assert rest.losses == whole.losses[6:]  # bit-identical, not merely close
    w1, w2 = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k], err_msg=k)
    # the log was cut back to the checkpoint and redone: one record per step
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()
             if "train_loss" in json.loads(line)]
    assert steps == list(range(1, 13))


def test_resume_refuses_other_settings_and_other_framework(tmp_path):
    from minilm.numpy.train import train as ntrain
    from minilm.torch.train import train as ttrain

    args = get_preset("tiny", steps=4, eval_interval=4, sample_tokens=0)
    ntrain(args, tmp_path / "run", progress=False, print_fn=lambda s: None)
    with pytest.raises(CheckpointError, match="lr"):
        ntrain(args.replace(lr=1.0), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="numpy"):
        ttrain(args.replace(impl="torch"), tmp_path / "run", resume=True, progress=False)
    # steps may change: the run is extended
    more = ntrain(args.replace(steps=6), tmp_path / "run", resume=True, progress=False,
                  print_fn=lambda s: None)
    assert more.first_step == 4 and more.step == 6


def test_load_run_rejects_weights_that_do_not_fit(tmp_path):
    from minilm.numpy.train import train

    args = get_preset("tiny", steps=2, eval_interval=2, sample_tokens=0)
    train(args, tmp_path / "run", progress=False, print_fn=lambda s: None)
    ck = load_checkpoint(tmp_path / "run")
    model, tok, _ = load_run(tmp_path / "run")
    assert tok.vocab_size == ck.meta["config"]["vocab_size"]
    state = dict(ck.state)
    weights = dict(state["model"])
    weights.pop(sorted(weights)[0])
    state["model"] = weights
    bad = tmp_path / "bad" / "checkpoint.npz"
    save_checkpoint(bad, {k: v for k, v in ck.meta.items() if k not in ("format", "version")}, state)
    with pytest.raises(CheckpointError, match="bad"):
        load_run(bad)
