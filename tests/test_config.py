"""The config dataclasses: defaults, validation, round trips."""

import dataclasses

import pytest

from minilm.config import LSTMConfig, TransformerConfig


def test_transformer_defaults_fill_in_kv_heads_and_mlp_width():
    c = TransformerConfig(vocab_size=65, context_length=64, d_model=128, n_layer=4, n_head=4)
    assert c.n_kv_head == 4 and c.d_ff == 512 and c.head_dim == 32 and c.tie_weights


def test_configs_are_frozen_and_round_trip_through_dicts():
    c = TransformerConfig(65, 64, 128, 4, 4, n_kv_head=2, d_ff=300, dropout=0.1, tie_weights=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 64
    assert TransformerConfig.from_dict(c.to_dict()) == c
    l = LSTMConfig(vocab_size=65, d_embed=32, d_hidden=32, n_layer=2, tie_weights=True)
    assert LSTMConfig.from_dict(l.to_dict()) == l
    with pytest.raises(ValueError, match="unknown fields.*'n_heads'"):
        TransformerConfig.from_dict({**c.to_dict(), "n_heads": 4})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=130, n_head=4), "d_model=130 is not divisible by n_head=4"),
        (dict(n_head=4, n_kv_head=3), "n_head=4 is not divisible by n_kv_head=3"),
        (dict(vocab_size=0), "vocab_size must be a positive int, got 0"),
        (dict(context_length=2.5), "context_length must be a positive int, got 2.5"),
        (dict(n_layer=True), "n_layer must be a positive int, got True"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(d_ff=0), "d_ff must be a positive int"),
    ],
)
def test_bad_transformer_configs_name_the_values(kwargs, message):
    base = dict(vocab_size=65, context_length=64, d_model=128, n_layer=4, n_head=4)
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**base, **kwargs})


def test_bad_lstm_configs_name_the_values():
    with pytest.raises(ValueError, match="tie_weights needs d_embed == d_hidden, got d_embed=16, d_hidden=32"):
        LSTMConfig(vocab_size=10, d_embed=16, d_hidden=32, n_layer=1, tie_weights=True)
    with pytest.raises(ValueError, match="d_hidden must be a positive int, got -1"):
        LSTMConfig(vocab_size=10, d_embed=16, d_hidden=-1, n_layer=1)
