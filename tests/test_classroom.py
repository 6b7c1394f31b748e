"""The classroom's grader, tested: for every assignment the untouched student folder scores 0
on every test, the key scores full marks, and plausible student bugs (mutants, applied as
source edits to the key) each lose points; broken folders (syntax error, import error,
infinite loop, a hang the alarm cannot interrupt, wrong return type, calling minilm's own
copy) get 0 on what they break, with a message, within the timeout.

Each assignment's folders are graded by one worker process (``grade([...])``), so the whole
module runs in a few minutes on two cores. Mutants are edits inside one function, found by
name with ``ast`` (``_edit``): a library change that removes the edited line fails here
loudly instead of silently testing nothing.
"""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import minilm.classroom as classroom
from minilm.classroom import grader, holes, list_assignments, load_assignment
from minilm.classroom.folders import source_path

NAMES = ["softmax", "likelihood", "attention", "attention-backward", "flash-attention", "triton-flash",
         "layernorm-mlp", "transformer-block", "lstm", "adamw", "bpe", "sampling"]


# ---- mutants -------------------------------------------------------------------------------------

def _edit(old: str, new: str):
    """A mutant: replace ``old`` by ``new`` inside function ``qualname`` of the student's file."""
    def apply(source: str, qualname: str) -> str:
        fn = holes.find_function(ast.parse(source), qualname)
        lines = source.splitlines(keepends=True)
        first = min([fn.lineno] + [d.lineno for d in fn.decorator_list]) - 1
        body = "".join(lines[first: fn.end_lineno])
        assert old in body, f"mutant: {old!r} is no longer in {qualname}; update the mutant to the library's code"
        return "".join(lines[:first]) + body.replace(old, new, 1) + "".join(lines[fn.end_lineno:])
    return apply


def _rewrite(new_def: str):
    """A mutant: the whole function replaced by a buggy version a student might write."""
    return lambda source, qualname: holes.replace_function(source, qualname, textwrap.dedent(new_def))


def _wrap(new_def: str):
    """A mutant: the key's function is renamed ``_key_<name>`` and a buggy wrapper of it takes its
    name. It depends only on what the function returns, so it survives edits to the library."""
    def apply(source: str, qualname: str) -> str:
        fn = holes.find_function(ast.parse(source), qualname)
        lines = source.splitlines(keepends=True)
        lines[fn.lineno - 1] = lines[fn.lineno - 1].replace(f"def {fn.name}(", f"def _key_{fn.name}(", 1)
        return "".join(lines) + "\n\n" + textwrap.dedent(new_def)
    return apply


_ATTN_BWD = """
def scaled_dot_product_attention_backward(dout, q, k, v, attn_mask=None, is_causal=False, scale=None):
    q, k, v, dout = (np.asarray(a, dtype=np.float64) for a in (q, k, v, dout))
    L, S = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * (q @ k.swapaxes(-1, -2))
    if is_causal:
        s = np.where(np.tril(np.ones((L, S), dtype=bool)), s, -np.inf)
    if attn_mask is not None:
        s = np.where(attn_mask, s, -np.inf) if attn_mask.dtype == bool else s + attn_mask
    m = s.max(axis=-1, keepdims=True)
    m[m == -np.inf] = 0
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    l[l == 0] = 1
    p = p / l
    dv = p.swapaxes(-1, -2) @ dout
    dp = dout @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = SCALE_Q * (ds @ k)
    dk = SCALE_K * DK
    return dq, dk, dv
"""

MUTANTS: dict[str, dict[str, tuple[str, str, object]]] = {
    # assignment: {mutant: (file, function, edit)}
    "softmax": {
        "softmax without the max trick (overflows on large logits)": ("functional.py", "softmax", _rewrite("""
            def softmax(x, axis=-1):
                e = np.exp(np.asarray(x, dtype=float))
                return e / e.sum(axis=axis, keepdims=True)
            """)),
        "cross_entropy_backward without the 1/N of the mean": ("functional.py", "cross_entropy_backward", _edit(
            "dlogits *= counted[..., None] / dlogits.dtype.type(max(n, 1))", "dlogits *= counted[..., None]")),
        "log_softmax as log(softmax) (-inf on large logits)": ("functional.py", "log_softmax", _rewrite("""
            def log_softmax(x, axis=-1):
                e = np.exp(np.asarray(x, dtype=float))
                return np.log(e / e.sum(axis=axis, keepdims=True))
            """)),
    },
    "likelihood": {
        "perplexity averaged over ignored positions too": ("likelihood.py", "perplexity", _rewrite("""
            def perplexity(logits, targets, ignore_index=-100):
                return math.exp(-float(token_log_probs(logits, targets, ignore_index).mean()))
            """)),
        "bits per token left in nats": ("likelihood.py", "bits_per_token", _edit("/ math.log(2)", "")),
        "log P(W) as a mean instead of a sum": ("likelihood.py", "sequence_log_prob", _edit(".sum(axis=-1)", ".mean(axis=-1)")),
    },
    "attention": {
        "the 1/sqrt(d) left out": ("attention.py", "_attention_weights", _rewrite("""
            def _attention_weights(q, k, bias, scale):
                s = q @ k.swapaxes(-1, -2)
                if bias is not None:
                    s = s + bias
                m = s.max(axis=-1, keepdims=True)
                m[m == -np.inf] = 0
                e = np.exp(s - m)
                l = e.sum(axis=-1, keepdims=True)
                l[l == 0] = 1
                return e / l
            """)),
        "a causal mask off by one (a query cannot see itself)": ("attention.py", "_bias", _rewrite("""
            def _bias(L, S, bool_mask, float_mask, is_causal, dtype):
                allowed = None
                if is_causal:
                    allowed = np.tril(np.ones((L, S), dtype=bool), k=-1)
                if bool_mask is not None:
                    allowed = bool_mask if allowed is None else allowed & bool_mask
                if allowed is None:
                    return float_mask
                base = np.zeros((), dtype) if float_mask is None else float_mask
                return np.where(allowed, base, dtype.type(-np.inf))
            """)),
        "softmax without the max trick": ("attention.py", "_attention_weights", _rewrite("""
            def _attention_weights(q, k, bias, scale):
                s = scale * (q @ k.swapaxes(-1, -2))
                if bias is not None:
                    s = s + bias
                e = np.exp(s)
                l = e.sum(axis=-1, keepdims=True)
                return e / np.where(l == 0, 1, l)
            """)),
    },
    "attention-backward": {
        "a transposed gradient (dk = ds q)": ("attention.py", "scaled_dot_product_attention_backward", _rewrite(
            _ATTN_BWD.replace("SCALE_Q", "scale").replace("SCALE_K", "scale").replace("DK", "(ds @ q)"))),
        "the scale left out of dq and dk": ("attention.py", "scaled_dot_product_attention_backward", _rewrite(
            _ATTN_BWD.replace("SCALE_Q", "1.0").replace("SCALE_K", "1.0").replace("DK", "(ds.swapaxes(-1, -2) @ q)"))),
    },
    "flash-attention": {
        "acc not rescaled by alpha": ("flash_attention.py", "flash_attention", _edit(
            "acc *= alpha[..., None]", "acc *= 1.0")),
        "lse without the running max": ("flash_attention.py", "flash_attention", _edit(
            "m_i + np.log(l_safe)", "np.log(l_safe)")),
    },
    "triton-flash": {
        "exp instead of exp2 (scores are in base 2)": ("flash_attention.py", "_attn_fwd_inner", _edit(
            "p = tl.math.exp2(s - m_new[:, None])", "p = tl.exp(s - m_new[:, None])")),
        "a causal mask off by one": ("flash_attention.py", "_attn_fwd_inner", _edit(
            "offs_m[:, None] >= offs_n[None, :]", "offs_m[:, None] > offs_n[None, :]")),
    },
    "layernorm-mlp": {
        "LayerNorm backward without the mean terms": ("layers.py", "layer_norm_backward", _rewrite("""
            def layer_norm_backward(dy, cache):
                xhat, rstd, w = cache
                C = xhat.shape[-1]
                dw = (dy * xhat).reshape(-1, C).sum(axis=0)
                db = dy.reshape(-1, C).sum(axis=0)
                return rstd * dy * w, dw, db
            """)),
        "a transposed weight gradient (dW = x^T dy)": ("layers.py", "linear_backward", _wrap("""
            def linear_backward(dy, cache):
                dx, dW, db = _key_linear_backward(dy, cache)
                return dx, dW.T, db
            """)),
        "GELU backward missing the tanh' term": ("layers.py", "gelu_backward", _rewrite("""
            def gelu_backward(dy, cache):
                x, t = cache
                return dy * 0.5 * (1.0 + t)
            """)),
    },
    "transformer-block": {
        "block backward forgetting the residual path": ("layers.py", "block_backward", _wrap("""
            def block_backward(dy, cache):
                dx, g = _key_block_backward(dy, cache)
                return dx - dy, g
            """)),
        "attention backward with a transposed o_proj gradient": ("layers.py", "attention_backward", _wrap("""
            def attention_backward(dy, cache):
                dx, g = _key_attention_backward(dy, cache)
                g["o_proj.weight"] = g["o_proj.weight"].T.copy()
                return dx, g
            """)),
    },
    "lstm": {
        "forget gate without sigmoid'": ("lstm.py", "_step_backward", _edit(
            'da[:, at["f"]] = dc * c_prev * f * (1.0 - f)', 'da[:, at["f"]] = dc * c_prev')),
        "BPTT that does not carry dh to the previous step": ("lstm.py", "lstm_layer_backward", _edit(
            "dh = dy[t] + dh_next", "dh = dy[t]")),
        "tanh for the output gate": ("lstm.py", "_step_forward", _edit("_sigmoid_(o)", "np.tanh(o, out=o)")),
    },
    "adamw": {
        "Adam without bias correction": ("optim.py", "AdamW._update", _edit(
            "bias_correction1 = 1.0 - beta1**t", "bias_correction1 = 1.0")),
        "L2 penalty in the gradient instead of decoupled decay": ("optim.py", "AdamW._update", _edit(
            "p *= 1.0 - lr * wd", "g = g + wd * p")),
        "warm-up from 0 (step / warmup_steps)": ("optim.py", "cosine_schedule", _edit(
            "return max_lr * (step + 1) / (warmup_steps + 1)", "return max_lr * step / warmup_steps")),
    },
    "bpe": {
        "merge that does not skip the merged pair": ("bpe.py", "merge", _rewrite("""
            def merge(ids, pair, new_id):
                out, i = [], 0
                while i < len(ids):
                    if i < len(ids) - 1 and (ids[i], ids[i + 1]) == tuple(pair):
                        out.append(new_id)
                    else:
                        out.append(ids[i])
                    i += 1
                return out
            """)),
        "ties going to the largest pair": ("bpe.py", "train_merges", _rewrite("""
            def train_merges(chunk_counts, n_merges):
                words = {c: list(c) for c in chunk_counts}
                merges = []
                while len(merges) < n_merges:
                    counts = {}
                    for c, f in chunk_counts.items():
                        for p in zip(words[c], words[c][1:]):
                            counts[p] = counts.get(p, 0) + f
                    if not counts:
                        break
                    best = max(counts, key=lambda p: (counts[p], p))
                    merges.append(best)
                    words = {c: merge(ids, best, 255 + len(merges)) for c, ids in words.items()}
                return merges
            """)),
        "encoding with the leftmost mergeable pair first": ("bpe.py", "BPETokenizer._encode_chunk", _rewrite("""
            def _encode_chunk(self, chunk):
                ids = list(chunk)
                changed = True
                while changed:
                    changed = False
                    for i in range(len(ids) - 1):
                        new_id = self.ranks.get((ids[i], ids[i + 1]))
                        if new_id is not None:
                            ids = merge(ids, (ids[i], ids[i + 1]), new_id)
                            changed = True
                            break
                return ids
            """)),
    },
    "sampling": {
        "top-p keeping one token too few": ("generate.py", "top_p_filter", _rewrite("""
            def top_p_filter(logits, p):
                probs = softmax64(logits)
                order = np.argsort(-logits, axis=-1, kind="stable")
                sorted_probs = np.take_along_axis(probs, order, axis=-1)
                keep_sorted = np.cumsum(sorted_probs, axis=-1) < p
                keep_sorted[..., 0] = True
                keep = np.empty(logits.shape, dtype=bool)
                np.put_along_axis(keep, order, keep_sorted, axis=-1)
                return np.where(keep, logits, -np.inf)
            """)),
        "temperature multiplied instead of divided": ("generate.py", "next_token", _rewrite("""
            def next_token(logits, u, temperature, top_k, top_p, **kwargs):
                logits = np.asarray(logits, dtype=np.float64)
                if temperature == 0.0:
                    return np.argmax(logits, axis=-1).astype(np.int64)
                z = (logits - np.max(logits, axis=-1, keepdims=True)) * temperature
                if top_k is not None:
                    z = top_k_filter(z, top_k)
                if top_p is not None and top_p < 1.0:
                    z = top_p_filter(z, top_p)
                return sample_from_probs(softmax64(z), u)
            """)),
        "top-k keeping k + 1 tokens": ("generate.py", "top_k_filter", _rewrite("""
            def top_k_filter(logits, k):
                order = np.argsort(-logits, axis=-1, kind="stable")
                keep = np.zeros(logits.shape, dtype=bool)
                np.put_along_axis(keep, order[..., : k + 1], True, axis=-1)
                return np.where(keep, logits, -np.inf)
            """)),
    },
}


def _mutate(folder: Path, fname: str, qualname: str, edit) -> None:
    p = folder / fname
    p.write_text(edit(p.read_text("utf-8"), qualname), "utf-8")


# ---- the manifests ---------------------------------------------------------------------------------

def test_every_assignment_is_listed_with_its_chapter():
    got = {a.name: a.chapter for a in list_assignments()}
    assert got == {"softmax": 3, "likelihood": 1, "attention": 4, "attention-backward": 5, "flash-attention": 6,
                   "triton-flash": 7, "layernorm-mlp": 8, "transformer-block": 9, "lstm": 10, "adamw": 11,
                   "bpe": 2, "sampling": 13}
    for a in list_assignments():
        assert a.points > 0 and any(t.visible for t in a.tests) and any(not t.visible for t in a.tests), a.name
        for h in a.holes:  # every hole is graded, and every check exists
            assert any(t.hole == h.name for t in a.tests), (a.name, h.name)
        checks = __import__(a.checks, fromlist=["_"])
        for t in a.tests:
            assert callable(getattr(checks, t.check, None)), (a.name, t.check)
    assert set(MUTANTS) == set(NAMES) and all(len(m) >= 2 for m in MUTANTS.values())


def test_unknown_assignment_names_the_known_ones():
    with pytest.raises(ValueError, match="softmax"):
        load_assignment("no-such-thing")


# ---- cutting holes ------------------------------------------------------------------------------

SRC = '''
import numpy as np


@decorator
def f(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Docstring stays."""
    # m = max x
    m = x.max(axis, keepdims=True)  # (..., 1)
    for i in range(3):
        # nested comment
        x = x + i
    return x - m


class C:
    def g(self, y):
        """Method doc."""
        return y + 1

    def h(self, y):
        z = y * 2
        # BEGIN SOLUTION
        # z = z + 1
        z = z + 1
        # END SOLUTION
        return z
'''


def test_cut_function_keeps_signature_docstring_and_comments():
    out = holes.cut(SRC, "f", message="f: write it")
    ast.parse(out)
    assert "@decorator\ndef f(x: np.ndarray, axis: int = -1) -> np.ndarray:\n    \"\"\"Docstring stays.\"\"\"" in out
    assert "    # m = max x\n    # m: (..., 1)\n    # nested comment\n    raise NotImplementedError('f: write it')\n" in out
    assert "x.max" not in out and "range(3)" not in out
    assert "def g(self, y)" in out and "return y + 1" in out  # the rest is untouched


def test_cut_method_and_region():
    out = holes.cut(SRC, "C.g", message="g!")
    assert "        \"\"\"Method doc.\"\"\"\n        raise NotImplementedError('g!')" in out
    out = holes.cut(SRC, "C.h", kind="region", message="h!")
    ast.parse(out)
    assert "z = y * 2" in out and "return z" in out and "z = z + 1\n" not in out.replace("# z = z + 1", "")
    assert "# BEGIN SOLUTION\n        # z = z + 1\n        raise NotImplementedError('h!')\n        # END SOLUTION" in out
    ns: dict = {}
    exec(compile(SRC.replace("@decorator\n", ""), "src", "exec"), ns)  # the markers are comments
    assert ns["C"]().h(1) == 3


def test_cut_errors_name_the_problem():
    with pytest.raises(holes.HoleError, match="no function 'nope'"):
        holes.cut(SRC, "nope")
    with pytest.raises(holes.HoleError, match="no class 'D'"):
        holes.cut(SRC, "D.g")
    with pytest.raises(holes.HoleError, match="BEGIN SOLUTION"):
        holes.cut(SRC, "f", kind="region")


def test_library_files_with_markers_have_exactly_one_region_per_region_hole():
    for a in list_assignments():
        for h in a.holes:
            src = source_path(a.files[h.file]).read_text("utf-8")
            cut = holes.cut(src, h.name, h.kind)  # raises if the function or its markers are gone
            ast.parse(cut)
            if h.kind == "region":
                assert holes.strip_markers(src).count("SOLUTION") == src.count("SOLUTION") - 2


# ---- make, grade, mutants: every assignment --------------------------------------------------------

def _grade_assignment(name: str, tmp: Path):
    hw, key = tmp / "hw", tmp / "key"
    classroom.make(name, hw)
    classroom.make(name, key, solution=True)
    folders = [hw, key]
    for i, (label, (fname, qualname, edit)) in enumerate(MUTANTS[name].items()):
        m = tmp / f"mutant{i}"
        classroom.make(name, m, solution=True)
        _mutate(m, fname, qualname, edit)
        folders.append(m)
    return folders, classroom.grade(folders)


def _check_reports(name, folders, reports):
    hw, key, *mutants = reports
    a = load_assignment(name)
    assert hw.max_score == key.max_score == a.points
    for t in hw.tests:  # the untouched student folder: 0 on every test, saying what to write
        assert t.score == 0 and "not implemented yet" in t.output, (t.name, t.output)
    for t in key.tests:  # the key: full marks
        assert t.passed, (t.name, t.output)
    for (label, _), r in zip(MUTANTS[name].items(), mutants):
        lost = [t.name for t in r.tests if not t.passed]
        assert r.score < key.score and lost, f"mutant {label!r} of {name} lost no points"
    # the student's files were graded, not the library's
    for r, f in zip(reports, folders):
        assert r.files and all(Path(p).resolve().parent == f.resolve() for p in r.files.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n != "triton-flash"])
def test_hw_scores_zero_key_full_mutants_lose(name, tmp_path):
    folders, reports = _grade_assignment(name, tmp_path)
    _check_reports(name, folders, reports)


@pytest.mark.slow
@pytest.mark.triton
def test_triton_kernel_assignment_under_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    folders, reports = _grade_assignment("triton-flash", tmp_path)
    _check_reports("triton-flash", folders, reports)


# ---- broken folders ---------------------------------------------------------------------------------

def _key(tmp: Path, name: str = "softmax", sub: str = "key") -> Path:
    return classroom.make(name, tmp / sub, solution=True)


def _softmax_tests(report):
    return [t for t in report.tests if t.hole == "softmax"]


@pytest.mark.slow
def test_broken_folders_score_zero_with_a_message(tmp_path, monkeypatch):
    syntax = _key(tmp_path, sub="syntax")
    (syntax / "functional.py").write_text((syntax / "functional.py").read_text() + "\ndef oops(:\n    pass\n")
    imports = _key(tmp_path, sub="imports")
    src = (imports / "functional.py").read_text()
    (imports / "functional.py").write_text(src.replace("import numpy as np\n", "import numpy as np\nimport no_such_module_for_minilm\n", 1))
    loop = _key(tmp_path, sub="loop")
    _mutate(loop, "functional.py", "softmax", _rewrite("""
        def softmax(x, axis=-1):
            while True:
                try:
                    pass
                except Exception:
                    pass
        """))
    wrong_type = _key(tmp_path, sub="wrong_type")
    _mutate(wrong_type, "functional.py", "softmax", _rewrite("""
        def softmax(x, axis=-1):
            return [0.5, 0.5], "probabilities"
        """))
    borrowed = _key(tmp_path, sub="borrowed")
    _mutate(borrowed, "functional.py", "softmax", _rewrite("""
        def softmax(x, axis=-1):
            from minilm.numpy.functional import softmax as library_softmax
            return library_softmax(x, axis)
        """))
    zeros = _key(tmp_path, sub="zeros")  # the library's softmax is right; the student's file is not
    _mutate(zeros, "functional.py", "softmax", _rewrite("""
        def softmax(x, axis=-1):
            return np.zeros_like(np.asarray(x, dtype=float))
        """))
    folders = [syntax, imports, loop, wrong_type, borrowed, zeros]
    import time

    t0 = time.perf_counter()
    reports = classroom.grade(folders, timeout=4.0)
    assert time.perf_counter() - t0 < 90
    syn, imp, lp, wt, bor, zer = reports
    for t in syn.tests:
        assert t.score == 0 and "SyntaxError" in t.output and "line" in t.output, t.output
    for t in imp.tests:
        assert t.score == 0 and "cannot be imported" in t.output and "no_such_module_for_minilm" in t.output, t.output
    for r, needle in ((lp, "timed out"), (wt, "NumPy array"), (bor, "minilm's own copy of softmax"),
                      (zer, "differ from the reference")):
        for t in _softmax_tests(r):
            assert t.score == 0 and needle in t.output, (r.folder.name, t.name, t.output)
        # a broken softmax costs only the softmax tests: the other holes are graded on their own
        assert all(t.passed for t in r.tests if t.hole != "softmax"), [t.name for t in r.tests if not t.passed]


@pytest.mark.slow
def test_a_hang_the_alarm_cannot_stop_is_killed_and_grading_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(grader, "GRACE_S", 1.0)
    hang = _key(tmp_path, sub="hang")
    _mutate(hang, "functional.py", "log_softmax", _rewrite("""
        def log_softmax(x, axis=-1):
            import signal
            signal.signal(signal.SIGALRM, signal.SIG_IGN)  # the alarm is ignored: only the watchdog is left
            while True:
                pass
        """))
    r = classroom.grade(hang, timeout=3.0, visible_only=True)
    bad = [t for t in r.tests if t.hole == "log_softmax"]
    assert bad and all(t.score == 0 and "timed out" in t.output for t in bad), [t.output for t in bad]
    assert all(t.passed for t in r.tests if t.hole != "log_softmax")


# ---- output: the table, results.json, the CLI, Gradescope's zip --------------------------------------

@pytest.mark.slow
def test_results_json_follows_gradescope_and_the_cli_works(tmp_path, capsys):
    from minilm.cli import main

    assert main(["assignment", "list"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 + len(NAMES) and "triton-flash" in out
    key = tmp_path / "key"
    assert main(["assignment", "make", "likelihood", "--solution", "--out", str(key)]) == 0
    assert main(["assignment", "make", "likelihood", "--out", str(key)]) == 1  # not empty: one clear line
    assert "not empty" in capsys.readouterr().err
    results = tmp_path / "results.json"
    assert main(["assignment", "grade", str(key), "--json", str(results)]) == 0
    table = capsys.readouterr().out
    assert "total 12/12" in table and "perplexity" in table
    d = json.loads(results.read_text())
    assert d["score"] == d["max_score"] == 12
    assert d["extra_data"]["assignment"] == "likelihood"
    for t in d["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output", "visibility"}
        assert t["visibility"] in ("visible", "hidden", "after_due_date", "after_published")
    assert sum(t["max_score"] for t in d["tests"]) == d["max_score"]
    assert main(["assignment", "grade", str(tmp_path / "nowhere")]) == 1


@pytest.mark.slow
def test_student_folder_readme_and_visible_tests(tmp_path):
    hw = classroom.make("attention", tmp_path / "hw")
    readme = (hw / "README.md").read_text()
    assert "1. `_bias`" in readme and "2. `_attention_weights`" in readme and "minilm assignment grade . --visible" in readme
    src = (hw / "attention.py").read_text()
    assert "raise NotImplementedError(\n        '_bias: " in src and "def scaled_dot_product_attention(" in src
    visible = [t for t in load_assignment("attention").tests if t.visible]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_visible.py"],
                          cwd=hw, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"{len(visible)} failed" in proc.stdout, proc.stdout[-2000:]
    assert "not implemented yet: _bias" in proc.stdout


@pytest.mark.slow
def test_gradescope_zip_runs_its_autograder(tmp_path):
    z = classroom.gradescope_zip("likelihood", tmp_path / "likelihood.zip")
    with zipfile.ZipFile(z) as zf:
        names = set(zf.namelist())
        assert {"setup.sh", "run_autograder", "assignment/.assignment.json", "assignment/likelihood.py",
                "minilm_src/pyproject.toml", "minilm_src/minilm/__init__.py",
                "minilm_src/minilm/classroom/assignments/likelihood.json"} <= names
        assert any(n.startswith("minilm_src/minilm/kernels/") for n in names)
        assert "pip install" in zf.read("setup.sh").decode()
        root = tmp_path / "autograder"
        zf.extractall(root / "source")
    for script in ("setup.sh", "run_autograder"):
        p = root / "source" / script
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    # a submission (in a sub-folder, as students upload) with the key's likelihood.py
    key = classroom.make("likelihood", tmp_path / "key", solution=True)
    (root / "submission" / "hw").mkdir(parents=True)
    (root / "submission" / "hw" / "likelihood.py").write_text((key / "likelihood.py").read_text())
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = json.loads((root / "results" / "results.json").read_text())
    assert d["score"] == d["max_score"] == 12
