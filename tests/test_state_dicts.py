"""The shared state_dict check, and that every model of both twins goes through it."""

from __future__ import annotations

import numpy as np
import pytest

import minilm.numpy as mn
import minilm.torch as mt
from minilm.numpy.layers import to_numpy
from minilm.config import EncoderConfig, LSTMConfig, TransformerConfig
from minilm.state_dicts import check_state_dict


def test_names_missing_unexpected_and_mismatched_keys():
    own = {"w": (2, 3), "b": (3,)}
    check_state_dict(own, {"w": (2, 3), "b": (3,)})  # exact: fine
    with pytest.raises(ValueError, match=r"missing keys \['b'\], unexpected keys \['c'\], "
                                         r"shape mismatches: w: expected \(2, 3\), got \(3, 2\)"):
        check_state_dict(own, {"w": (3, 2), "c": (1,)})
    check_state_dict(own, {"w": (2, 3), "c": (1,)}, strict=False)  # the shared keys load
    with pytest.raises(ValueError, match="shape mismatches"):
        check_state_dict(own, {"w": (3, 2)}, strict=False)  # shapes count without strict too
    with pytest.raises(ValueError, match="no key in common"):
        check_state_dict(own, {"c": (1,)}, strict=False)


CONFIGS = [TransformerConfig(vocab_size=11, context_length=8, d_model=16, n_layer=1, n_head=2),
           LSTMConfig(vocab_size=11, d_embed=8, d_hidden=8, n_layer=1),
           EncoderConfig(vocab_size=11, context_length=8, d_model=16, n_layer=1, n_head=2)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("twin", [mn, mt], ids=["numpy", "torch"])
def test_every_model_refuses_a_bad_state_dict_before_changing_anything(config, twin):
    cls = {TransformerConfig: "TransformerLM", LSTMConfig: "LSTMLM", EncoderConfig: "TransformerEncoder"}
    model = getattr(twin, cls[type(config)])(config, seed=0)
    before = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    bad = {k: np.zeros_like(v) for k, v in before.items()}
    first = next(iter(bad))
    bad[first] = np.zeros(bad[first].shape + (1,))  # one wrong shape, everything else zeros
    with pytest.raises(ValueError, match=rf"load_state_dict: shape mismatches: {first}: expected"):
        model.load_state_dict(bad)
    after = {k: to_numpy(v) for k, v in model.state_dict().items()}
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing was loaded
