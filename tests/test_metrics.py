"""Tests for minilm.numpy.metrics and its twin minilm.torch.metrics, against scikit-learn
(an independent implementation) and against each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minilm.numpy import metrics as M
from minilm.testing import assert_close
from minilm.torch import metrics as TM

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_accuracy_vs_sklearn_and_twin(rng, k):
    logits = rng.standard_normal((200, 7))
    y = rng.integers(0, 7, 200)
    expected = sklearn_metrics.top_k_accuracy_score(y, logits, k=k, labels=np.arange(7))
    assert math.isclose(M.top_k_accuracy(logits, y, k), expected, rel_tol=1e-12)
    assert math.isclose(TM.top_k_accuracy(torch.as_tensor(logits), torch.as_tensor(y), k), expected,
                        rel_tol=1e-12)
    if k == 1:
        assert math.isclose(M.next_token_accuracy(logits, y), (logits.argmax(-1) == y).mean())


def test_next_token_accuracy_ignores_positions(rng):
    logits = rng.standard_normal((3, 5, 11))
    targets = logits.argmax(-1)  # all right ...
    targets[0, :2] = (targets[0, :2] + 1) % 11  # ... but two
    targets[1, 0] = -100  # ... and one not counted
    counted = 3 * 5 - 1
    assert math.isclose(M.next_token_accuracy(logits, targets), (counted - 2) / counted)
    assert math.isclose(TM.next_token_accuracy(torch.as_tensor(logits), torch.as_tensor(targets)),
                        (counted - 2) / counted)
    assert math.isnan(M.next_token_accuracy(logits, np.full((3, 5), -100)))
    # a target tied with the largest logit counts (ties in the target's favour, both twins)
    tie = np.array([[1.0, 1.0, 0.0]])
    assert M.top_k_accuracy(tie, np.array([1]), 1) == TM.top_k_accuracy(torch.as_tensor(tie), torch.tensor([1]), 1) == 1.0
    with pytest.raises(ValueError, match="k must"):
        M.top_k_accuracy(logits, targets, k=12)
    with pytest.raises(ValueError, match="do not match"):
        M.top_k_accuracy(logits, targets[:, :3])


def test_nan_logits_are_misses_in_both_twins():
    """A diverged model (NaN logits) predicts nothing: every comparison with NaN is False, so
    a rank count alone would call each such row a hit."""
    logits = np.array([[np.nan] * 4, [0.0, np.nan, 1.0, 2.0], [3.0, 0.0, 1.0, 2.0]])  # (3, 4)
    y = np.array([0, 3, 0])
    for k in (1, 4):
        assert M.top_k_accuracy(logits, y, k) == 1 / 3
        assert TM.top_k_accuracy(torch.as_tensor(logits), torch.as_tensor(y), k) == 1 / 3


def test_confusion_precision_recall_f1_vs_sklearn(rng):
    K = 5
    y = rng.integers(0, K, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, K, 300))
    p[p == 4] = 3  # class 4 never predicted: precision 0 by convention
    cm = M.confusion_matrix(y, p, K)
    assert (cm == sklearn_metrics.confusion_matrix(y, p, labels=range(K))).all()
    assert (TM.confusion_matrix(torch.as_tensor(y), torch.as_tensor(p), K).numpy() == cm).all()
    prec, rec, f1 = M.precision_recall_f1(y, p, K)
    sp, sr, sf, _ = sklearn_metrics.precision_recall_fscore_support(y, p, labels=range(K), zero_division=0)
    assert_close(prec, sp, 1e-12, 1e-12, "precision")
    assert_close(rec, sr, 1e-12, 1e-12, "recall")
    assert_close(f1, sf, 1e-12, 1e-12, "f1")
    for a, b in zip(TM.precision_recall_f1(torch.as_tensor(y), torch.as_tensor(p), K), (prec, rec, f1)):
        assert_close(a, b, 1e-12, 1e-12)
    assert math.isclose(M.accuracy(p, y), sklearn_metrics.accuracy_score(y, p))
    assert math.isclose(TM.accuracy(torch.as_tensor(p), torch.as_tensor(y)), M.accuracy(p, y))
    report = M.classification_report(y, p, ["a", "b", "c", "d", "e"])
    assert "macro f1" in report and f"{f1.mean():.3f}" in report
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        M.confusion_matrix(y, p + 2, K)


def test_plot_confusion_matrix(tmp_path):
    pytest.importorskip("matplotlib")
    cm = np.array([[5, 1], [2, 7]])
    path = tmp_path / "cm.png"
    M.plot_confusion_matrix(cm, ["x", "y"], path=path)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="square"):
        M.plot_confusion_matrix(np.ones((2, 3)))


def test_top_k_counter_numpy_and_torch_and_in_estimate_loss(rng):
    """TopKCounter sums hits over batches (numpy arrays or torch tensors alike), and the
    training loops' estimate_loss counts them over exactly the windows it scores."""
    from minilm.config import TransformerConfig
    from minilm.numpy.train import estimate_loss
    from minilm.numpy.transformer import TransformerLM
    from minilm.presets import get_preset
    from minilm.training import random_batch

    a, b = M.TopKCounter(), M.TopKCounter()
    logits = [rng.standard_normal((2, 3, 9)) for _ in range(3)]
    targets = [rng.integers(0, 9, (2, 3)) for _ in range(3)]
    targets[1][0, 0] = -100
    for z, y in zip(logits, targets):
        a.update(z, y)
        b.update(torch.as_tensor(z), torch.as_tensor(y))
    z, y = np.concatenate([x.reshape(-1, 9) for x in logits]), np.concatenate([t.reshape(-1) for t in targets])
    assert a.result() == b.result() == {"val_next_token_accuracy": M.next_token_accuracy(z, y),
                                        "val_top5_accuracy": M.top_k_accuracy(z, y, 5)}
    args = get_preset("shakespeare-char", impl="numpy", context_length=8, batch_size=3, eval_iters=2)
    model = TransformerLM(TransformerConfig(vocab_size=11, context_length=8, d_model=8, n_layer=1, n_head=2))
    val = rng.integers(0, 11, 200)
    acc = M.TopKCounter()
    estimate_loss(model, val, args, accuracy=acc)
    windows = np.random.default_rng(args.seed + 1)
    xs, ys = zip(*(random_batch(val, 3, 8, windows) for _ in range(2)))
    expected = M.next_token_accuracy(np.concatenate([model.forward(x) for x in xs]), np.concatenate(ys))
    assert acc.count == 2 * 3 * 8 and acc.result()["val_next_token_accuracy"] == expected


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """The library's plots draw on their own Figure: a notebook's inline backend (here, in a
    fresh interpreter, the 'svg' backend standing in for it) is never switched to Agg."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg')\n"
            "import numpy as np\n"
            "from minilm.numpy.metrics import plot_confusion_matrix\n"
            "from minilm.compress import plot_rows\n"
            f"plot_confusion_matrix(np.eye(3, dtype=int), path={str(tmp_path / 'cm.png')!r})\n"
            f"plot_rows([dict(variant='float32', bytes=100, val_perplexity=5.0)], {str(tmp_path / 'c.png')!r})\n"
            "print(matplotlib.get_backend())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0
