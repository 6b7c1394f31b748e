"""The ``minilm`` command, run as ``python -m minilm`` in subprocesses, as users run it.

- every ``--help`` exits 0 and says what the command does;
- ``train`` with the tiny preset leaves the run folder, prints perplexity and a sample;
  ``generate`` and ``eval`` work from it, and the NumPy and PyTorch twins sample the same text
  from the same checkpoint and seed;
- user errors (bad flags, missing or corrupt files, unknown presets) give ONE line on stderr,
  a non-zero exit (2 for usage, 1 otherwise) and no traceback;
- SIGINT (Ctrl-C) during ``train`` saves a checkpoint and exits 130.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def minilm(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minilm", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def assert_user_error(p: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_bare_minilm_prints_the_help_and_trains_nothing(tmp_path):
    p = minilm(cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: minilm") and "train" in p.stdout and p.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no runs/ folder: nothing ran


@pytest.mark.parametrize("command", [[], ["train"], ["generate"], ["eval"], ["bench"]])
def test_help_exits_0(command):
    p = minilm(*command, "--help")
    assert p.returncode == 0, p.stderr
    assert "usage: minilm" in p.stdout
    if command:
        assert "example" in p.stdout or "benchmarks:" in p.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    p = minilm("train", "--preset", "tiny", "--steps", "20", "--eval-interval", "10",
               "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "perplexity" in p.stdout and "sample:" in p.stdout
    return out


def test_train_writes_the_run_folder(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"checkpoint", "config.json", "tokenizer.json", "log.jsonl", "loss.png"} <= names
    assert {p.name for p in (run_dir / "checkpoint").iterdir()} == {
        "model.safetensors", "state.safetensors", "meta.json"}


def test_generate_same_text_from_either_twin(run_dir):
    args = ["generate", "--checkpoint", str(run_dir), "--prompt", "The ", "--max-new-tokens", "30",
            "--seed", "7"]
    a = minilm(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("The ") and len(a.stdout) > 20
    b = minilm(*args, "--impl", "torch")
    assert b.returncode == 0, b.stderr
    assert b.stdout == a.stdout
    c = minilm(*args, "--num-samples", "2", "--temperature", "0")
    assert c.returncode == 0 and c.stdout.count("The ") >= 2


def test_eval_prints_loss_perplexity_bits_per_char(run_dir):
    p = minilm("eval", "--checkpoint", str(run_dir), "--eval-iters", "3")
    assert p.returncode == 0, p.stderr
    for word in ("val loss", "perplexity", "bits per char", "over 3 random batches of 8x16"):
        assert word in p.stdout


def test_eval_defaults_to_the_whole_split_the_same_in_either_twin(run_dir):
    """The default is exact: every validation target once, in order, so it says how many, and
    the NumPy and PyTorch twins (and a second call) print the same loss."""
    import re

    from minilm.runs import load_run
    from minilm.training import prepare_data
    from minilm.presets import TrainArgs

    a = minilm("eval", "--checkpoint", str(run_dir))
    b = minilm("eval", "--checkpoint", str(run_dir), "--impl", "torch")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    _, tok, ckpt = load_run(run_dir)
    n_val = len(prepare_data(TrainArgs.from_dict(ckpt.meta["args"]), tok).val)
    line = next(x for x in a.stdout.splitlines() if x.startswith("val loss"))
    assert line.endswith(f"over {n_val - 1:,} tokens (whole split)"), line
    loss = lambda out: float(re.search(r"val loss: ([0-9.]+)", out).group(1))  # noqa: E731
    assert loss(a.stdout) == pytest.approx(loss(b.stdout), abs=2e-4)
    assert minilm("eval", "--checkpoint", str(run_dir)).stdout == a.stdout


def test_train_output_to_a_file_has_plain_progress_lines(tmp_path):
    """Not a terminal (a log file, CI): no bar, but a start line saying what runs (steps,
    model size, how validation is measured), one speed / time-left line, one line per
    evaluation, and the closing summary saying what the validation loss averaged over."""
    out = tmp_path / "run"
    p = minilm("train", "--preset", "tiny", "--steps", "40", "--eval-interval", "20",
               "--sample-tokens", "0", "--out", str(out))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any("0.03M parameters: 40 steps of 8x16 tokens; validation every 20 steps, over 2 "
               "random batches of 8x16" in x for x in lines), p.stdout
    speed = [x for x in lines if "steps/s" in x]
    assert len(speed) == 1 and speed[0].startswith("step 20/40") and "to go" in speed[0], lines
    evals = [x for x in lines if x.startswith("step ") and "val loss" in x]
    assert [x.split(" |")[0] for x in evals] == ["step 20/40", "step 40/40"]
    assert "left" in evals[0]
    assert any(x.startswith("validation: loss") and "over 2 random batches of 8x16" in x for x in lines)
    assert "\r" not in p.stdout + p.stderr  # no progress bar redraws


def test_an_existing_run_is_refused_with_one_line_naming_resume_and_overwrite(run_dir, tmp_path):
    before = (run_dir / "checkpoint" / "model.safetensors").read_bytes()
    p = minilm("train", "--preset", "tiny", "--steps", "2", "--out", str(run_dir))
    assert_user_error(p, 1, "already holds a run", "--resume", "--overwrite")
    assert (run_dir / "checkpoint" / "model.safetensors").read_bytes() == before
    assert_user_error(minilm("train", "--resume", "--overwrite", "--out", str(run_dir)), 2,
                      "--resume", "--overwrite")
    out = tmp_path / "copy"
    assert minilm("train", "--preset", "tiny", "--steps", "2", "--sample-tokens", "0",
                  "--out", str(out)).returncode == 0
    q = minilm("train", "--preset", "tiny", "--steps", "3", "--eval-interval", "3", "--sample-tokens",
               "0", "--out", str(out), "--overwrite")
    assert q.returncode == 0, q.stderr
    from minilm.checkpoint import load_checkpoint

    assert load_checkpoint(out).step == 3


@pytest.mark.parametrize("flag", [["--device", "cuda"], ["--device", "cpu"], ["--amp", "bf16"],
                                  ["--threads", "2"], ["--attention", "naive"], ["--dropout", "0.1"]])
def test_torch_only_options_with_impl_numpy_are_an_error(tmp_path, flag):
    p = minilm("train", "--preset", "tiny", "--impl", "numpy", *flag, "--out", str(tmp_path / "r"))
    assert_user_error(p, 2, flag[0], "--impl torch only")
    assert not (tmp_path / "r").exists()


def test_user_errors_are_one_line_without_traceback(tmp_path, run_dir):
    assert_user_error(minilm("train", "--steps", "many"), 2, "--steps")
    assert_user_error(minilm("train", "--preset", "nope", "--steps", "1"), 1, "unknown preset")
    assert_user_error(minilm("train", "--preset", "tiny", "--steps", "0", "--out", str(tmp_path / "r")),
                      1, "steps")
    assert_user_error(minilm("train", "--preset", "tiny", "--corpus", str(tmp_path / "no.txt"),
                             "--out", str(tmp_path / "r")), 1, "no.txt")
    assert_user_error(minilm("bench", "nosuch"), 2, "nosuch")
    assert_user_error(minilm("eval", "--checkpoint", str(tmp_path / "missing")), 1, "missing")
    bad = tmp_path / "checkpoint.npz"
    bad.write_bytes(b"not a zip file")
    assert_user_error(minilm("generate", "--checkpoint", str(bad)), 1, "checkpoint.npz", "first format")
    broken = tmp_path / "broken" / "checkpoint"
    broken.mkdir(parents=True)
    for f in (run_dir / "checkpoint").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"cut")
    assert_user_error(minilm("generate", "--checkpoint", str(broken.parent)), 1, "model.safetensors")
    assert_user_error(minilm("generate", "--checkpoint", str(run_dir), "--top-p", "2"), 2, "--top-p")
    assert_user_error(minilm("train", "--resume", "--out", str(tmp_path / "empty")), 1, "empty")
    other = tmp_path / "other.txt"
    other.write_text("plain text, then a character the builtin corpus lacks: \U0001F600\n" * 50)
    assert_user_error(minilm("eval", "--checkpoint", str(run_dir), "--corpus", str(other)), 1,
                      "other.txt", "U+1F600")
    evil = tmp_path / "bad.pt"
    evil.write_bytes(pickle.dumps({"not": "a checkpoint"}))
    assert_user_error(minilm("eval", "--checkpoint", str(evil)), 1, "bad.pt", "first format")


def test_devices_torch_cannot_use_are_one_line_errors(run_dir, tmp_path):
    """--device is checked before a model is built or moved (a CUDA device on a torch without
    CUDA used to end in torch's 27-line AssertionError traceback)."""
    torch = pytest.importorskip("torch")
    ckpt = ["--checkpoint", str(run_dir)]
    bogus = ("unknown device 'bogus'",)
    assert_user_error(minilm("generate", *ckpt, "--impl", "torch", "--device", "bogus"), 1, *bogus)
    assert_user_error(minilm("eval", *ckpt, "--impl", "torch", "--device", "bogus"), 1, *bogus)
    assert_user_error(minilm("train", "--preset", "tiny", "--impl", "torch", "--device", "bogus",
                             "--out", str(tmp_path / "r")), 1, *bogus)
    # the NumPy twin has no devices but the CPU
    assert_user_error(minilm("generate", *ckpt, "--device", "cuda"), 1, "'cuda'", "CPU only")
    if not torch.cuda.is_available():
        for command in (["generate", *ckpt, "--impl", "torch"], ["eval", *ckpt, "--impl", "torch"],
                        ["train", "--preset", "tiny", "--impl", "torch", "--out", str(tmp_path / "r")]):
            assert_user_error(minilm(*command, "--device", "cuda"), 1, "device 'cuda'", "CUDA")
        assert not (tmp_path / "r").exists()  # refused before anything ran


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "minilm", "train", "--preset", "tiny", "--steps", "100000",
         "--eval-interval", "5", "--sample-tokens", "0", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.time() + 90
        while not (out / "checkpoint" / "meta.json").exists():  # training is under way
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "checkpoint saved to" in err and "--resume" in err
    from minilm.checkpoint import load_checkpoint

    assert load_checkpoint(out).step >= 5


def test_bench_help_says_what_each_benchmark_measures():
    p = minilm("bench", "--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())  # the epilog wraps
    assert "sm_80/sm_90" in text and "registers, spills, shared memory and wgmma" in text
    assert "TFLOP/s" in text and "sdpa" in text
    assert "against PyTorch" not in text and "memory" not in text.replace("shared memory", "")


def test_bench_dispatches_to_the_benchmark_scripts():
    p = minilm("bench", "quality", "--help")
    assert p.returncode == 0, p.stderr
    assert "usage" in p.stdout.lower()


@pytest.mark.parametrize("which", ["compile", "attention"])
def test_bench_kernel_modules_call_themselves_by_the_command_line_name(which):
    p = minilm("bench", which, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"usage: minilm bench {which} "), p.stdout[:200]


def test_train_without_matplotlib_names_no_loss_png(tmp_path, monkeypatch, capsys):
    """In-process (so matplotlib can be made unimportable): the run says why loss.png was
    skipped, and the closing line lists only files that exist."""
    from minilm.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--steps", "4", "--eval-interval", "2",
                 "--sample-tokens", "0", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "loss.png skipped: matplotlib is not installed" in printed
    folder_line = next(line for line in printed.splitlines() if line.startswith("run folder:"))
    assert "log.jsonl" in folder_line and "loss.png" not in folder_line
    assert not (out / "loss.png").exists()


def test_strict_benchmarks_exit_1_on_a_missed_target(tmp_path, monkeypatch, capsys):
    """--strict turns a printed MISS/FAIL into exit 1. The targets are raised out of reach so
    the outcome does not depend on this machine's speed; tiny sizes keep it fast."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    gen = importlib.import_module("bench_generate")
    tok = importlib.import_module("bench_tokenizer")
    monkeypatch.setattr(gen, "TARGET_SPEEDUP", float("inf"))
    monkeypatch.setattr(tok, "TARGET_ENCODE_MB_S", float("inf"))
    g = ["--n-layer", "1", "--d-model", "16", "--n-head", "2", "--context", "16", "--vocab", "11",
         "--prompt", "2", "--new-tokens", "3", "--repeats", "1", "--twins", "numpy"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat; the dog sat on the log.\n" * 40)
    t = ["--corpus", str(corpus), "--vocab-size", "270", "--repeats", "1", "--small-chars", "500",
         "--small-merges", "5"]
    assert gen.main(g) == 0 and gen.main([*g, "--strict"]) == 1
    assert tok.main(t) == 0 and tok.main([*t, "--strict"]) == 1
    out = capsys.readouterr().out
    assert "MISSES" in out and "FAIL" in out


def test_bare_train_is_the_shakespeare_char_main_job(tmp_path, monkeypatch, capsys):
    """`minilm train` with no flags (what scripts/run.sh runs) trains the shakespeare-char
    preset into runs/shakespeare-char and says first what to expect. The loop itself is
    replaced by a stub: this checks what it is asked to do, in a second."""
    import minilm.torch.train as torch_train
    from minilm.cli import main
    from minilm.presets import EXPECTED, get_preset

    calls = []

    def stub(args, out, **kwargs):
        calls.append((args, out, kwargs))
        raise KeyboardInterrupt  # ends the command like a Ctrl-C

    monkeypatch.setattr(torch_train, "train", stub)
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 130
    (args, out, kwargs), = calls
    assert args == get_preset("shakespeare-char") and args.corpus == "tinyshakespeare"
    assert out == Path("runs") / "shakespeare-char" and kwargs["overwrite"] is False
    printed = capsys.readouterr().out
    assert f"minilm: expect {EXPECTED['shakespeare-char']}" in printed and "1.80" in printed
    main(["train", "--steps", "100"])  # a changed preset: no promise about its result
    assert "expect" not in capsys.readouterr().out
    run_sh = (ROOT / "scripts" / "run.sh").read_text().strip().splitlines()
    assert run_sh[-1] == 'exec minilm train "$@"'
