"""Model configurations: one frozen dataclass per model kind, shared by both twins.

Presets are a named table (``PRESETS``) rather than code, so a teacher can add one in a line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


def _positive_int(cls: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{cls}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class TransformerConfig:
    """A decoder-only, pre-LayerNorm Transformer language model (GPT-2 style)."""

    vocab_size: int  # V: number of token ids
    context_length: int  # T_max: longest sequence the learned position embedding covers
    d_model: int  # C: width of the residual stream
    n_layer: int  # number of Transformer blocks
    n_head: int  # H: query heads; d_model must be divisible by n_head
    n_kv_head: int | None = None  # Hkv: key/value heads (grouped-query attention); None means n_head
    d_ff: int | None = None  # hidden width of the MLP; None means 4 * d_model
    dropout: float = 0.0  # dropout probability on the residual branches (PyTorch twin only when training)
    tie_weights: bool = True  # output head shares the token-embedding matrix

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("vocab_size", "context_length", "d_model", "n_layer", "n_head"):
            _positive_int(name, f, getattr(self, f))
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        _positive_int(name, "n_kv_head", self.n_kv_head)
        _positive_int(name, "d_ff", self.d_ff)
        if self.d_model % self.n_head:
            raise ValueError(
                f"{name}: d_model={self.d_model} is not divisible by n_head={self.n_head}"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"{name}: n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_dim(self) -> int:
        """D = C / H."""
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformerConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class LSTMConfig:
    """A multi-layer LSTM language model."""

    vocab_size: int  # V: number of token ids
    d_embed: int  # width of the token embedding fed to the first layer
    d_hidden: int  # width of the hidden and cell state of every layer
    n_layer: int  # number of stacked LSTM layers
    dropout: float = 0.0  # dropout between layers (PyTorch twin only when training)
    tie_weights: bool = False  # output head shares the embedding; needs d_embed == d_hidden

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("vocab_size", "d_embed", "d_hidden", "n_layer"):
            _positive_int(name, f, getattr(self, f))
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout!r}")
        if self.tie_weights and self.d_embed != self.d_hidden:
            raise ValueError(
                f"{name}: tie_weights needs d_embed == d_hidden, got d_embed={self.d_embed}, "
                f"d_hidden={self.d_hidden}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LSTMConfig":
        return _from_dict(cls, d)


def _from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known are {sorted(known)}")
    return cls(**d)
