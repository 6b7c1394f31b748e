"""``minilm bench attention`` / ``compare`` (minilm.attention_bench) on a tiny CPU sweep.

One module-scoped run (a few seconds) with a plug-in that passes ``attention_conformance``
and one that fails it: the JSON schema, the table, the plots, the failing plug-in reported
and not timed, the passing one timed; ``compare`` on two files; and every ``minilm bench
NAME --help`` naming the command the user typed.
"""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from minilm import attention_bench as ab  # noqa: E402
from minilm.cli import BENCHMARKS, main as cli_main  # noqa: E402

PLUGINS = '''
import torch.nn.functional as F

def good(q, k, v, is_causal=False, scale=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])

def bad(q, k, v, is_causal=False, scale=None):  # ignores the causal mask
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
'''

ROW_KEYS = {"impl", "framework", "device", "mode", "dtype", "causal", "B", "H", "L", "S", "D", "flops",
            "status", "max_rel_err", "median_s", "iqr_s", "times_s", "flops_per_s", "pct_gemm",
            "pct_peak", "peak_bytes", "memory_method"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny sweep through the command: JSON, plots, printed table."""
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "bench_plugins_for_test.py").write_text(PLUGINS)
    sys.path.insert(0, str(tmp))
    out = tmp / "a.json"
    argv = ["bench", "attention", "--quick", "--lengths", "16,32", "--head-dims", "8", "--causal", "false",
            "--only", "numpy-reference,numpy-flash,torch-flash,sdpa-math", "--repeats", "2",
            "--impl", "bench_plugins_for_test:good", "--impl", "bench_plugins_for_test:bad",
            "--json", str(out), "--no-progress"]
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            code = cli_main(argv)
    finally:
        sys.path.remove(str(tmp))
    return code, buf.getvalue(), out, json.loads(out.read_text())


@pytest.mark.slow  # the shared tiny sweep: ~10 s on 2 idle cores
def test_json_has_environment_limits_implementations_and_rows(run):
    code, printed, path, data = run
    assert code == 0, printed
    assert data["schema"] == ab.SCHEMA
    env = data["environment"]
    assert env["device"] == "cpu" and env["threads"]["torch"] == 1 and env["numpy"] and env["torch"]
    assert env["cpu"]
    assert data["limits"]["gemm_flops"]["numpy/float32"] > 0 and data["limits"]["gemm_flops"]["torch/float32"] > 0
    assert data["limits"]["copy_bytes_per_s"]["numpy"] > 0
    rows = ab.load_rows(str(path))
    assert rows == data["rows"]
    for r in rows:
        assert set(r) == ROW_KEYS
    ok = [r for r in rows if r["status"] == "ok"]
    # 4 built-ins + the good plug-in, 2 lengths, 2 modes
    assert len(ok) == 5 * 2 * 2 == len(rows)
    for r in ok:
        assert r["median_s"] > 0 and r["iqr_s"] >= 0 and len(r["times_s"]) == 2
        assert r["flops"] == ab.attention_flops(r["B"], r["H"], r["L"], r["S"], r["D"], r["causal"], r["mode"])
        assert r["flops_per_s"] == pytest.approx(r["flops"] / r["median_s"])
        assert r["max_rel_err"] <= 1e-4 and r["pct_gemm"] > 0
    assert {r["memory_method"] for r in ok if r["framework"] == "numpy"} == {"tracemalloc"}
    # NumPy's reference holds p (L, S) float32 per head: its forward peaks above B*H*L*S*4 bytes
    ref = next(r for r in ok if r["impl"] == "numpy-reference" and r["L"] == 32 and r["mode"] == "fwd")
    assert ref["peak_bytes"] >= ref["B"] * ref["H"] * 32 * 32 * 4


@pytest.mark.slow  # the shared tiny sweep: ~10 s on 2 idle cores
def test_failing_plugin_is_reported_and_not_timed_passing_one_is_timed(run):
    code, printed, _, data = run
    impls = {i["name"]: i for i in data["implementations"]}
    bad, good = impls["bench_plugins_for_test:bad"], impls["bench_plugins_for_test:good"]
    assert not bad["timed"] and bad["status"].startswith("failed attention_conformance")
    assert "causal" in bad["status"]
    assert good["timed"] and good["status"] == "ok"
    assert not [r for r in data["rows"] if r["impl"] == "bench_plugins_for_test:bad"]
    assert len([r for r in data["rows"] if r["impl"] == "bench_plugins_for_test:good"]) == 4
    assert "bench_plugins_for_test:bad: failed attention_conformance" in printed


@pytest.mark.slow  # the shared tiny sweep: ~10 s on 2 idle cores
def test_table_and_plots(run):
    code, printed, path, data = run
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("impl "))
    assert "median ms" in lines[header] and "GFLOP/s" in lines[header] and "peak MB" in lines[header]
    assert sum(1 for line in lines if line.startswith(("numpy-", "torch-flash", "sdpa-math"))) == 16
    for what in ("throughput", "memory"):
        png = path.with_name(f"a_{what}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"a_{what}.png" in printed


@pytest.mark.slow  # the shared tiny sweep: ~10 s on 2 idle cores
def test_compare_prints_row_by_row_ratios(run, tmp_path, capsys):
    _, _, path, data = run
    faster = json.loads(json.dumps(data))
    for r in faster["rows"]:
        if r["impl"] == "sdpa-math" and r["status"] == "ok":
            r["median_s"] /= 4  # B is 4x faster on these rows
    faster["rows"] = [r for r in faster["rows"] if r["impl"] != "numpy-flash"]  # only in A
    b = tmp_path / "b.json"
    b.write_text(json.dumps(faster))
    pairs = ab.compare(data, faster)
    assert len(pairs) == 20 - 4
    assert all(p["time_ratio"] == pytest.approx(0.25 if p["impl"] == "sdpa-math" else 1.0) for p in pairs)
    assert cli_main(["bench", "compare", str(path), str(b)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("sdpa-math")]
    assert len(rows) == 4 and all(float(r[-1]) == pytest.approx(0.25, abs=1e-3) for r in rows)
    assert "16 rows in both" in out


def test_compare_rejects_a_file_that_is_not_a_bench_result(tmp_path, capsys):
    a = tmp_path / "x.json"
    a.write_text(json.dumps({"rows": []}))
    assert cli_main(["bench", "compare", str(a), str(a)]) == 1
    assert "not a 'minilm bench attention' JSON file" in capsys.readouterr().err


def test_plugin_spec_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["bench", "attention", "--impl", "nocolon", "--json", ""]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err


@pytest.mark.parametrize("which", list(BENCHMARKS))
def test_every_benchmark_help_names_the_command_typed(which, capsys):
    assert cli_main(["bench", which, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: minilm bench {which} "), out[:200]


def test_bad_arguments_end_in_one_line_and_exit_2_before_anything_runs(capsys):
    for argv, words in ((["--modes", "fwd,bwd"], "mode 'bwd'"), (["--dtypes", "fp32"], "dtype 'fp32'"),
                        (["--lengths", "1k"], "comma-separated integers"), (["--lengths", "0"], "lengths"),
                        (["--threads", "0"], "--threads must be >= 1")):
        with pytest.raises(SystemExit) as exc:
            ab.main([*argv, "--json", "", "--no-progress"], prog="minilm bench attention")
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err  # one line


def test_plots_need_matplotlib_and_say_so_before_running(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as exc:
        ab.main(["--json", "x.json"], prog="minilm bench attention")
    assert exc.value.code == 2
    assert "need the 'matplotlib' package" in capsys.readouterr().err


def test_flops_are_counted_as_documented():
    # forward 4*B*H*L*S*D, half when causal, x3.5 with the backward
    assert ab.attention_flops(1, 1, 2, 3, 4, False, "fwd") == 96
    assert ab.attention_flops(1, 1, 2, 3, 4, True, "fwd+bwd") == 48 * 3.5
    assert ab.attention_flops(2, 3, 5, 7, 11, False, "fwd+bwd") == 4 * 2 * 3 * 5 * 7 * 11 * 3.5
