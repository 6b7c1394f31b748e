"""Checkpoints: round trips, atomic writes, clear errors, no unpickling, exact resume,
either twin loading the other's weights, umask-honouring files, runs never silently lost.

The exact-resume tests train a tiny model for N steps in one go, and again stopped at step k
(Ctrl-C simulated by a callback raising KeyboardInterrupt after step k) and resumed from the
checkpoint; the losses of steps k+1..N and the final weights must be bit-identical.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from minilm.checkpoint import (
    CheckpointError,
    RunFolder,
    atomic_write,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from minilm.presets import get_preset
from minilm.runs import load_run

torch = pytest.importorskip("torch")
import safetensors.torch  # noqa: E402  (after torch)

QUIET = dict(progress=False, print_fn=lambda s: None)


def _weights():
    rng = np.random.default_rng(0)
    return {"tok_emb.weight": rng.standard_normal((5, 3)), "ln.bias": np.zeros(3, np.float32)}


def _state():
    return {
        "optim": {"state": {0: {"step": np.array(3.0), "exp_avg": np.ones((2, 2))}},
                  "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0, 1]}]},
        "ints": np.arange(4, dtype=np.int64),
        "rng": [torch.arange(5, dtype=torch.uint8)],  # tensors are stored too (as arrays)
        "nothing": None,
    }


def test_round_trip_keeps_values_dtypes_shapes_and_structure(tmp_path):
    meta = {"framework": "numpy", "step": 7, "rng": np.random.default_rng(3).bit_generator.state}
    save_checkpoint(tmp_path / "checkpoint", meta, _weights(), _state())
    ck = load_checkpoint(tmp_path)  # a run folder finds its checkpoint
    assert ck.step == 7 and ck.meta["rng"] == meta["rng"] and ck.path == tmp_path / "checkpoint"
    for k, v in _weights().items():
        got = ck.weights[k]
        assert got.dtype == v.dtype and got.shape == v.shape
        np.testing.assert_array_equal(got, v)
    step = ck.state["optim"]["state"][0]["step"]
    assert step.shape == () and step == 3.0  # 0-d stays 0-d; int keys stay ints
    assert ck.state["optim"]["param_groups"][0]["betas"] == (0.9, 0.99)  # tuples stay tuples
    assert ck.state["nothing"] is None
    np.testing.assert_array_equal(ck.state["rng"][0], np.arange(5, dtype=np.uint8))
    rng = np.random.default_rng()
    rng.bit_generator.state = ck.meta["rng"]
    assert rng.random() == np.random.default_rng(3).random()
    # the weights file is plain safetensors: torch's own reader opens it, with the same names
    t = safetensors.torch.load_file(tmp_path / "checkpoint" / "model.safetensors")
    assert set(t) == set(_weights()) and t["tok_emb.weight"].dtype == torch.float64
    assert set(load_weights(tmp_path)) == set(_weights())
    # and the metadata is JSON beside it
    assert json.loads((tmp_path / "checkpoint" / "meta.json").read_text())["step"] == 7


def test_crash_mid_save_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"framework": "numpy", "step": 1}, _weights(), _state())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = safetensors.numpy.save
    calls = []

    def crashing_save(tensors, metadata=None):
        calls.append(1)
        if len(calls) == 2:  # the weights are written, then the state file fails
            raise OSError("disk full (simulated)")
        return real(tensors, metadata=metadata)

    monkeypatch.setattr(safetensors.numpy, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(folder, {"framework": "numpy", "step": 2}, _weights(), _state())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert load_checkpoint(folder).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temp folder left


def test_crash_between_the_two_renames_falls_back_to_the_old_checkpoint(tmp_path):
    """The swap is checkpoint/ -> .checkpoint.old/, then the new folder -> checkpoint/. A crash
    in between leaves only .checkpoint.old/, which the loader uses."""
    save_checkpoint(tmp_path / "checkpoint", {"framework": "numpy", "step": 4}, _weights(), _state())
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    assert load_checkpoint(tmp_path).step == 4
    save_checkpoint(tmp_path / "checkpoint", {"framework": "numpy", "step": 5}, _weights(), _state())
    assert load_checkpoint(tmp_path).step == 5
    assert not (tmp_path / ".checkpoint.old").exists()


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write(p, lambda f: f.write(b"one"))
    atomic_write(p, lambda f: f.write(b"two"))
    assert p.read_bytes() == b"two" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(RuntimeError):
        atomic_write(p, lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert p.read_bytes() == b"two" and len(list(tmp_path.iterdir())) == 1


def test_missing_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=str(tmp_path)) as e:
        find_checkpoint(tmp_path)  # an empty run folder
    assert "checkpoint/meta.json" in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("victim", ["model.safetensors", "state.safetensors", "meta.json"])
def test_corrupt_checkpoints_error_names_the_file(tmp_path, victim):
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"framework": "numpy", "step": 1}, _weights(), _state())
    data = (folder / victim).read_bytes()
    for content in (data[: len(data) // 2], b"\x00not a checkpoint at all" * 10, b""):
        (folder / victim).write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path)
        msg = str(e.value)
        assert victim in msg and "\n" not in msg, msg
    (folder / victim).unlink()
    with pytest.raises(CheckpointError, match="meta.json" if victim == "meta.json" else victim):
        load_checkpoint(tmp_path)


def test_json_of_another_format_is_refused(tmp_path):
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"framework": "numpy", "step": 1}, _weights(), _state())
    (folder / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a minilm checkpoint"):
        load_checkpoint(folder)


class _Evil:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["checkpoint.npz", "checkpoint.pt"])
def test_first_format_checkpoints_are_refused_in_one_line_and_never_unpickled(tmp_path, name):
    """minilm's first format (np.savez / torch.save): one line saying so, nothing unpickled."""
    marker = tmp_path / "pwned"
    p = tmp_path / "run" / name
    p.parent.mkdir()
    if name.endswith(".pt"):
        torch.save({"__meta__": torch.zeros(3), "arrays": {"x": _Evil(str(marker))}}, p)
    else:
        p.write_bytes(pickle.dumps(_Evil(str(marker))))
    for where in (p, p.parent):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(where)
        msg = str(e.value)
        assert msg.startswith(f"{p}: a checkpoint in minilm's first format") and "\n" not in msg, msg
        assert "train the run again" in msg
    assert not marker.exists()


def test_safetensors_files_hold_no_code(tmp_path):
    """A file that is not safetensors (here: a pickle renamed) is refused; nothing runs."""
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"framework": "numpy", "step": 1}, _weights(), _state())
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_checkpoint(folder)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Files honour the umask


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_of_a_run_honours_the_umask(tmp_path, umask):
    """In a fresh interpreter under ``umask``: a whole run (checkpoint, config, tokenizer, log,
    plot) and a resume of it. Every file is 0666 & ~umask, every folder 0777 & ~umask (a
    private 0600 made by mkstemp was the bug)."""
    code = (
        "import os, sys\n"
        f"os.umask({umask})\n"
        "from minilm.numpy.train import train\n"
        "from minilm.presets import get_preset\n"
        "a = get_preset('tiny', steps=4, eval_interval=2, sample_tokens=0)\n"
        "train(a, sys.argv[1], progress=False, print_fn=lambda s: None)\n"
        "train(a.replace(steps=6), sys.argv[1], resume=True, progress=False, print_fn=lambda s: None)\n"
    )
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-c", code, str(run)], check=True, timeout=120,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    files = [p for p in run.rglob("*")]
    names = {p.relative_to(run).as_posix() for p in files}
    assert {"checkpoint/model.safetensors", "checkpoint/state.safetensors", "checkpoint/meta.json",
            "config.json", "tokenizer.json", "log.jsonl", "loss.png"} <= names, names
    for p in [run, *files]:
        mode = stat.S_IMODE(p.stat().st_mode)
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert mode == want, (p, oct(mode), oct(want))


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


def _saved_weights(path):
    return load_checkpoint(path).weights


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
    w1, w2 = _saved_weights(tmp_path / "whole"), _saved_weights(tmp_path / "part")
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
    with pytest.raises(CheckpointError, match="no such checkpoint file or run folder"):
        ntrain(args, tmp_path / "empty", resume=True, progress=False)
    # steps may change: the run is extended
    more = ntrain(args.replace(steps=6), tmp_path / "run", resume=True, progress=False,
                  print_fn=lambda s: None)
    assert more.first_step == 4 and more.step == 6


def test_load_run_rejects_weights_that_do_not_fit(tmp_path):
    from minilm.numpy.train import train

    args = get_preset("tiny", steps=2, eval_interval=2, sample_tokens=0)
    train(args, tmp_path / "run", **QUIET)
    ck = load_checkpoint(tmp_path / "run")
    model, tok, _ = load_run(tmp_path / "run")
    assert tok.vocab_size == ck.meta["config"]["vocab_size"]
    weights = dict(ck.weights)
    weights.pop(sorted(weights)[0])
    meta = {k: v for k, v in ck.meta.items() if k not in ("format", "version")}
    save_checkpoint(tmp_path / "bad" / "checkpoint", meta, weights, ck.state)
    for impl in ("numpy", "torch"):
        with pytest.raises(CheckpointError, match="bad"):
            load_run(tmp_path / "bad", impl=impl)


@pytest.mark.parametrize("preset", ["tiny", "tiny-lstm"])
@pytest.mark.parametrize("writer", ["numpy", "torch"])
def test_one_weights_file_loads_into_both_twins(tmp_path, preset, writer):
    """A run of either loop: its model.safetensors, read by safetensors' NumPy and torch
    readers alike, loads into the NumPy model and the torch twin, which then compute the same
    logits (float64: to 1e-10) as the model the loop trained."""
    from minilm.numpy.train import train as ntrain
    from minilm.torch.train import train as ttrain

    args = get_preset(preset, impl=writer, steps=3, eval_interval=3, sample_tokens=0, dtype="float64")
    (ntrain if writer == "numpy" else ttrain)(args, tmp_path / "run", **QUIET)
    path = tmp_path / "run" / "checkpoint" / "model.safetensors"
    as_numpy = safetensors.numpy.load_file(path)
    as_torch = safetensors.torch.load_file(path)
    assert set(as_numpy) == set(as_torch)
    for k in as_numpy:
        np.testing.assert_array_equal(as_torch[k].numpy(), as_numpy[k])
    n_model, _, _ = load_run(tmp_path / "run", impl="numpy")
    t_model, _, _ = load_run(tmp_path / "run", impl="torch")
    t_model.load_state_dict(as_torch)  # and the torch reader's dict, as is
    n_model.load_state_dict(as_numpy)
    x = np.random.default_rng(0).integers(0, n_model.config.vocab_size, (2, 7))
    n_out = n_model.forward(x)
    with torch.no_grad():
        t_out = t_model(torch.from_numpy(x))
    if isinstance(n_out, tuple):  # the LSTM returns (logits, state)
        n_out, t_out = n_out[0], t_out[0]
    np.testing.assert_allclose(t_out.numpy(), n_out, rtol=1e-10, atol=1e-10)
    # the state dicts saved are exactly the models' own, round trip
    for k, v in n_model.state_dict().items():
        np.testing.assert_array_equal(v, as_numpy[k])
        np.testing.assert_array_equal(t_model.state_dict()[k].numpy(), as_numpy[k])


# ---------------------------------------------------------------------------------------------
# Never lose a run


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, impl):
    train = _train_fn(impl)
    args = get_preset("tiny", impl=impl, steps=2, eval_interval=2, sample_tokens=0)
    train(args, tmp_path / "run", **QUIET)
    before = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError) as e:
        train(args.replace(seed=5), tmp_path / "run", **QUIET)
    assert str(e.value) == (f"{tmp_path / 'run'} already holds a run: continue it with --resume, "
                            f"or replace it with --overwrite")
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="give one"):
        train(args, tmp_path / "run", resume=True, overwrite=True, **QUIET)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    res = train(args.replace(seed=5, steps=3, eval_interval=3), tmp_path / "run", overwrite=True, **QUIET)
    assert res.first_step == 0 and load_checkpoint(tmp_path / "run").step == 3
    assert load_checkpoint(tmp_path / "run").meta["args"]["seed"] == 5
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train_loss" in r] == [1, 2, 3]  # the old log is gone
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # files not of minilm's stay
    # an empty folder, or one holding other things, is not a run
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("x")
    train(args, tmp_path / "other", **QUIET)
    # a folder holding a run of the first format is a run too
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint.npz").write_bytes(b"PK")
    with pytest.raises(ValueError, match="already holds a run"):
        train(args, tmp_path / "old", **QUIET)


def test_run_folder_clear_removes_only_minilms_files(tmp_path):
    run = RunFolder(tmp_path)
    save_checkpoint(run.checkpoint, {"framework": "numpy", "step": 1}, _weights())
    for name in ("config.json", "log.jsonl", "loss.png", "tokenizer.json", "mine.txt"):
        (tmp_path / name).write_text("x")
    assert run.holds_run()
    run.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"] and not run.holds_run()
