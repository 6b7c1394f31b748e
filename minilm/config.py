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
    """A decoder-only Transformer language model (GPT-2 style).

    ``norm`` places the LayerNorms: ``"pre"`` (GPT-2, the default) normalises each
    sublayer's input, ``x = x + f(LN(x))``, and ends with a final ``ln_f``; ``"post"`` (the
    original Transformer, BERT) normalises after each residual sum, ``x = LN(x + f(x))``, and
    has no ``ln_f`` (the last block's ``ln2`` already normalises what the head reads, as in
    BERT), so a post-LN model has no ``ln_f.*`` parameters.
    """

    vocab_size: int  # V: number of token ids
    context_length: int  # T_max: longest sequence the learned position embedding covers
    d_model: int  # C: width of the residual stream
    n_layer: int  # number of Transformer blocks
    n_head: int  # H: query heads; d_model must be divisible by n_head
    n_kv_head: int | None = None  # Hkv: key/value heads (grouped-query attention); None means n_head
    d_ff: int | None = None  # hidden width of the MLP; None means 4 * d_model
    dropout: float = 0.0  # dropout probability on the residual branches (PyTorch twin only when training)
    tie_weights: bool = True  # output head shares the token-embedding matrix
    norm: str = "pre"  # "pre": x = x + f(LN(x)), final ln_f; "post": x = LN(x + f(x)), no ln_f

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("vocab_size", "context_length", "d_model", "n_layer", "n_head"):
            _positive_int(name, f, getattr(self, f))
        _check_norm(name, self.norm)
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
class EncoderConfig:
    """A bidirectional Transformer encoder (BERT style): token + position + segment embeddings,
    self-attention without a causal mask (a key padding mask instead), post-LayerNorm blocks by
    default, and three heads on top (masked LM, next sentence, sequence classification).

    The blocks are the decoder's (``norm`` as in ``TransformerConfig``); the embeddings are
    summed and normalised by ``emb_ln`` as in BERT. With ``norm="pre"`` a final ``ln_f``
    follows the last block. ``n_classes=None`` means no classification head (pre-training);
    fine-tuning builds the same config with ``n_classes`` set and loads the pre-trained
    weights with ``strict=False``. See ``minilm.numpy.encoder`` for every parameter's name.
    """

    vocab_size: int  # V: number of token ids (special tokens included)
    context_length: int  # T_max: longest sequence the learned position embedding covers
    d_model: int  # C: width of the residual stream
    n_layer: int  # number of Transformer blocks
    n_head: int  # H: attention heads; d_model must be divisible by n_head
    d_ff: int | None = None  # hidden width of the MLP; None means 4 * d_model
    n_segment: int = 2  # number of segment (token type) ids: sentence A, sentence B
    n_classes: int | None = None  # classes of the sequence-classification head; None: no head
    dropout: float = 0.0  # dropout on embeddings and residual branches (PyTorch twin, training only)
    norm: str = "post"  # "post" (BERT) or "pre", as in TransformerConfig
    causal: bool = False  # causal attention (a left-to-right LM); the pooler then reads the last real token

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "n_segment"):
            _positive_int(name, f, getattr(self, f))
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        _positive_int(name, "d_ff", self.d_ff)
        if self.n_classes is not None:
            _positive_int(name, "n_classes", self.n_classes)
        if self.d_model % self.n_head:
            raise ValueError(
                f"{name}: d_model={self.d_model} is not divisible by n_head={self.n_head}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout!r}")
        _check_norm(name, self.norm)

    @property
    def n_kv_head(self) -> int:
        """The encoder's attention has as many key/value heads as query heads."""
        return self.n_head

    @property
    def head_dim(self) -> int:
        """D = C / H."""
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
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


NORMS = ("pre", "post")


def _check_norm(cls: str, value: Any) -> None:
    if value not in NORMS:
        raise ValueError(f"{cls}.norm must be one of {NORMS}, got {value!r}")


def _from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known are {sorted(known)}")
    return cls(**d)
