"""The compression measurement: storage format round trips, real byte counts, next-token
accuracy, variant validation, and (slow) the whole measurement on a tiny trained run."""

from __future__ import annotations

import numpy as np
import pytest

import minilm.compress as mc
import minilm.numpy.prune as npr
import minilm.numpy.quantize as nq
from minilm.config import TransformerConfig
from minilm.numpy.transformer import init_params

CFG = TransformerConfig(vocab_size=13, context_length=8, d_model=128, n_layer=1, n_head=4)


def _state():
    return init_params(CFG, 0)


@pytest.mark.parametrize("variant", [v for v in mc.sweep(0, CFG) if not v.peer], ids=lambda v: v.name)
def test_encode_decode_round_trip(variant, tmp_path):
    state, masks = mc.compress_state(_state(), CFG, variant)
    arrays, meta = mc.encode(state, variant, masks)
    nbytes = mc.save_compressed(tmp_path / "w.safetensors", arrays, meta)
    back, meta2 = mc.load_compressed(tmp_path / "w.safetensors")
    assert meta2["variant"]["name"] == variant.name and set(back) == set(state)
    assert nbytes == (tmp_path / "w.safetensors").stat().st_size > nq.state_dict_bytes(arrays)
    for k, w in state.items():
        assert back[k].shape == w.shape and back[k].dtype == np.float32
        if k in masks:  # pruned entries come back exactly zero
            assert np.all(back[k][~masks[k]] == 0)
        if variant.bits is None or w.ndim == 1:
            np.testing.assert_array_equal(back[k], w)
        else:
            q, s = nq.quantize(w, variant.bits, variant.per_channel, variant.group_size)
            np.testing.assert_array_equal(back[k], nq.dequantize(q, s))


def test_bytes_are_real():
    """50 % sparsity in float32: a bit per entry of mask plus 4 bytes per kept entry; int8 on
    top: 1 byte per kept entry plus the scales."""
    v = mc.Variant("p50", prune=0.5)
    state, masks = mc.compress_state(_state(), CFG, v)
    arrays, _ = mc.encode(state, v, masks)
    for k, m in masks.items():
        assert arrays[k + ".mask"].nbytes == -(-m.size // 8)
        assert arrays[k + ".values"].nbytes == 4 * int(m.sum())
    v8 = mc.Variant("p50 int8", bits=8, prune=0.5)
    a8, _ = mc.encode(state, v8, masks)
    for k, m in masks.items():
        assert a8[k + ".int8"].nbytes == int(m.sum())
    dense = nq.state_dict_bytes(state)
    assert nq.state_dict_bytes(arrays) < 0.65 * dense
    assert nq.state_dict_bytes(a8) < 0.25 * dense


def test_int4_odd_kept_count_round_trip():
    """An odd number of kept int4 values is padded with one nibble and dropped at load."""
    w = {"m.weight": np.arange(1, 13, dtype=np.float32).reshape(3, 4) / 12}
    masks = npr.Masks({"m.weight": np.array([[0, 0, 1, 1], [1, 1, 0, 1], [1, 0, 0, 1]], dtype=bool)})
    assert masks["m.weight"].sum() == 7
    v = mc.Variant("x", bits=4, per_channel=True, prune=0.1)
    masks.apply(w)
    arrays, meta = mc.encode(w, v, masks)
    back = mc.decode(arrays, meta)
    q, s = nq.quantize(w["m.weight"], 4, True)
    np.testing.assert_array_equal(back["m.weight"], nq.dequantize(q, s))


def test_next_token_accuracy():
    """Known answer: argmaxes (1, 0, 2) against targets (1, 1, 2), the third ignored: 1/2."""
    logits = np.array([[[0, 5, 1], [4, 0, 0], [0, 0, 9]]], dtype=float)
    assert mc.next_token_accuracy(logits, np.array([[1, 1, -100]])) == 0.5
    assert mc.next_token_accuracy(logits, np.array([[1, 0, 2]])) == 1.0
    assert np.isnan(mc.next_token_accuracy(logits, np.full((1, 3), -100)))
    with pytest.raises(ValueError, match="do not fit"):
        mc.next_token_accuracy(logits, np.array([1, 0, 2]))


@pytest.mark.parametrize("kw, match", [
    (dict(bits=3), "unknown bit width"),
    (dict(prune=1.0), r"sparsity must be in \[0, 1\)"),
    (dict(prune=-0.5), r"sparsity must be in \[0, 1\)"),
    (dict(prune=0.5, structured="layers"), "structured must be"),
    (dict(activations=True), "int8 activations"),
    (dict(group_size=32), "group_size needs"),
])
def test_bad_variants(kw, match):
    with pytest.raises(ValueError, match=match):
        mc.Variant("bad", **kw)


def test_sweep_leaves_out_groups_that_do_not_divide():
    names = [v.name for v in mc.sweep(0, TransformerConfig(vocab_size=5, context_length=4, d_model=64,
                                                           n_layer=1, n_head=2))]
    assert "int4 g64" in names and "int4 g128" not in names
    assert "int4 g128" in [v.name for v in mc.sweep(0, CFG)]


def test_variant_from_options():
    v = mc.variant_from_options("int8", per_channel=True, prune=0.5, finetune_steps=10)
    assert (v.bits, v.per_channel, v.prune, v.finetune_steps) == (8, True, 0.5, 10)
    assert v.name == "int8 per-channel + prune 50% + ft10"
    with pytest.raises(ValueError, match="unknown bit width 'int2'"):
        mc.variant_from_options("int2")


def test_load_compressed_rejects_other_files(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a minilm compressed"):
        mc.load_compressed(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        mc.load_compressed(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        mc.load_compressed(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------
# The command, end to end on tiny runs


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny Transformer run and a tiny LSTM run (NumPy loop, a few seconds each)."""
    from minilm.numpy.train import train
    from minilm.presets import get_preset

    root = tmp_path_factory.mktemp("runs")
    train(get_preset("tiny", steps=10, eval_interval=10), root / "tf", progress=False, print_fn=lambda s: None)
    train(get_preset("tiny-lstm", steps=2, eval_interval=2), root / "lstm", progress=False,
          print_fn=lambda s: None)
    return root


def _main(argv, capsys):
    from minilm.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors (bad choices) exit from inside parse_args
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_compress_command_loads_and_generates(tiny_runs, tmp_path, capsys):
    out = tmp_path / "c"
    rc, printed, err = _main(["compress", "--checkpoint", str(tiny_runs / "tf"), "--quantize", "int8",
                              "--per-channel", "--prune", "0.5", "--finetune-steps", "3", "--quick",
                              "--eval-iters", "2", "--gen-tokens", "4", "--out", str(out)], capsys)
    assert rc == 0, err
    rows = __import__("json").loads((out / "report.json").read_text())
    assert [r["variant"] for r in rows] == ["float32", "asked: int8 per-channel + prune 50% + ft3"]
    for key in ("params", "nonzero_params", "bytes", "val_perplexity", "accuracy", "tokens_per_s"):
        assert all(np.isfinite(r[key]) for r in rows)
    assert rows[1]["bytes"] < 0.3 * rows[0]["bytes"] and rows[1]["nonzero_params"] < rows[0]["nonzero_params"]
    assert "| variant |" in printed and (out / "report.md").is_file()
    # the compressed run: smaller on disk, and `minilm eval` / `generate` take it
    size = (out / "checkpoint" / "model.safetensors").stat().st_size
    assert size < 0.3 * (tiny_runs / "tf" / "checkpoint" / "model.safetensors").stat().st_size
    rc, printed, err = _main(["eval", "--checkpoint", str(out), "--eval-iters", "2"], capsys)
    assert rc == 0, err
    ppl = float(printed.split("perplexity:")[1].split()[0])
    assert ppl == pytest.approx(rows[1]["val_perplexity"], rel=1e-3)
    rc, printed, err = _main(["generate", "--checkpoint", str(out), "--prompt", "The ",
                              "--max-new-tokens", "8"], capsys)
    assert rc == 0 and printed.startswith("The "), err
    # the stored weights are the pruned ones: half of each prunable matrix is zero
    from minilm.runs import load_run

    model, _, _ = load_run(out, impl="numpy")
    w = model.params["blocks.0.mlp.fc.weight"]
    assert 0.3 < np.mean(w == 0) < 0.7


@pytest.mark.parametrize("argv, rc, match", [
    (["--prune", "1.0"], 2, r"must be in \[0, 1\)"),
    (["--prune", "-0.1"], 2, r"must be in \[0, 1\)"),
    (["--quantize", "int2"], 2, "invalid choice"),
    ([], 2, "nothing to compress"),
    (["--quantize", "int8", "--structured", "heads"], 2, "--structured needs --prune"),
    (["--prune", "0.5", "--activations"], 2, "--activations needs --quantize int8"),
    (["--quantize", "int8", "--group-size", "0"], 2, "--group-size must be"),
])
def test_compress_command_bad_flags(argv, rc, match, tiny_runs, tmp_path, capsys):
    got, printed, err = _main(["compress", "--checkpoint", str(tiny_runs / "tf"), "--out",
                               str(tmp_path / "o"), *argv], capsys)
    assert got == rc and len(err.strip().splitlines()) == 1
    assert __import__("re").search(match, err), err


def test_compress_command_wrong_kind_of_checkpoint(tiny_runs, tmp_path, capsys):
    rc, _, err = _main(["compress", "--checkpoint", str(tiny_runs / "lstm"), "--quantize", "int8",
                        "--out", str(tmp_path / "o")], capsys)
    assert rc == 1 and "takes Transformer runs" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    rc, _, err = _main(["compress", "--checkpoint", str(tmp_path / "empty"), "--quantize", "int8",
                        "--out", str(tmp_path / "o")], capsys)
    assert rc == 1 and "no checkpoint" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _main(["compress", "--checkpoint", str(tmp_path / "missing"), "--quantize", "int8",
                        "--out", str(tmp_path / "o")], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
