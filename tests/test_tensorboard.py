"""``--tensorboard``: the event files, read back with TensorBoard's own reader
(``EventAccumulator``), hold the scalars ``log.jsonl`` holds, the samples and the
weight/gradient histograms; without the extra, one line names it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from minilm.cli import main  # noqa: E402
from minilm.presets import get_preset  # noqa: E402
from minilm.tensorboard import EXTRA_HINT, TensorBoardObserver, summary_writer  # noqa: E402


def _read(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def _check_against_log(run, acc):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r and "val_loss" not in r]
    evals = [r for r in records if "val_loss" in r]
    assert steps and evals
    tags = acc.Tags()
    for key in ("train_loss", "lr", "grad_norm"):
        got = {e.step: e.value for e in acc.Scalars(key)}
        assert sorted(got) == [r["step"] for r in steps]
        for r in steps:  # event files store float32
            assert got[r["step"]] == pytest.approx(r[key], rel=1e-6)
    for key in ("val_loss", "val_perplexity", "val_bits_per_char", "train_loss_mean"):
        got = {e.step: e.value for e in acc.Scalars(key)}
        assert got == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in evals}
    names = [k for k in tags["histograms"]]
    assert "weights/blocks.0.attn.q_proj.weight" in names and "grads/blocks.0.mlp.fc.weight" in names
    h = acc.Histograms("weights/ln_f.weight")
    assert [e.step for e in h] == [r["step"] for r in evals]
    assert h[-1].histogram_value.num == 32  # d_model LayerNorm weights
    text = [t for t in tags["tensors"] if t.startswith("sample")]
    assert text, tags
    samples = acc.Tensors(text[0])
    assert [s.step for s in samples] == [r["step"] for r in evals]
    assert samples[-1].tensor_proto.string_val[0]  # the sample's text


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tensorboardX"])
def test_numpy_loop_events_match_the_log(backend, tmp_path):
    from minilm.numpy.train import train

    run = tmp_path / "run"
    obs = TensorBoardObserver(run / "tensorboard", backend)
    train(get_preset("tiny", steps=6, eval_interval=3), run, progress=False, print_fn=lambda s: None,
          observers=[obs])
    _check_against_log(run, _read(run / "tensorboard"))


@pytest.mark.slow
def test_cli_torch_loop_writes_events(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--impl", "torch", "--steps", "4", "--eval-interval", "2",
               "--out", str(run), "--quiet", "--tensorboard"])
    assert rc == 0, capsys.readouterr().err
    _check_against_log(run, _read(run / "tensorboard"))


def test_without_the_extra_one_line_names_it(tmp_path, monkeypatch, capsys):
    """Both writers unimportable (as on a machine without the extra): ImportError naming
    ``pip install 'minilm[tensorboard]'``, and the command stops before training."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"minilm\[tensorboard\]"):
        summary_writer(tmp_path / "tb")
    run = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--steps", "2", "--out", str(run), "--quiet", "--tensorboard"])
    err = capsys.readouterr().err
    assert rc == 1 and EXTRA_HINT in err and len(err.strip().splitlines()) == 1
    assert not (run / "checkpoint").exists()


def test_without_the_flag_no_events(tmp_path):
    rc = main(["train", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0 and not (tmp_path / "run" / "tensorboard").exists()


def test_bad_backend(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        summary_writer(tmp_path, "wandb")


def test_nonfinite_scalars_are_skipped(tmp_path):
    obs = TensorBoardObserver(tmp_path / "tb", "tensorboardX")
    obs.on_step({"step": 1, "train_loss": 2.0, "lr": float("nan"), "time": 3.0, "note": "x"})
    obs.close()
    acc = _read(tmp_path / "tb")
    assert acc.Tags()["scalars"] == ["train_loss"]
    assert np.isclose(acc.Scalars("train_loss")[0].value, 2.0)
