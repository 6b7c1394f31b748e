"""minilm.numpy: the readable NumPy references, forward and hand-written backward.

Every name here has a PyTorch twin of the same name and arguments in ``minilm.torch``.
Only NumPy is imported. Never run a file in this folder as a script (the folder would shadow
NumPy itself): use ``python -m``.

| name | module |
| --- | --- |
| softmax, log_softmax, cross_entropy | functional |
| scaled_dot_product_attention (+ _backward), split_heads, merge_heads | attention |
| flash_attention, flash_attention_backward | flash_attention |
| token_log_probs, sequence_log_prob, perplexity, bits_per_token | likelihood |
| TransformerLM | transformer |
| LSTMLM | lstm |
| TransformerEncoder | encoder |
| accuracy, next_token_accuracy, top_k_accuracy, confusion_matrix, precision_recall_f1 | metrics |
| generate | generate |
| (submodule) quantize, dequantize, quantize_activations, int8_matmul, pack_int4, QuantizedTransformerLM | quantize |
| (submodule) Masks, magnitude_masks, prune_heads, prune_neurons, finetune | prune |
| SGD, AdamW, clip_grad_norm, cosine_schedule | optim |
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it; imported on first use (PEP 562), so each idea's module
# stays independent and `import minilm.numpy` is cheap (all but the two imported eagerly
# below).
_EXPORTS = {
    "softmax": "functional",
    "log_softmax": "functional",
    "cross_entropy": "functional",
    "scaled_dot_product_attention": "attention",
    "scaled_dot_product_attention_backward": "attention",
    "split_heads": "attention",
    "merge_heads": "attention",
    "flash_attention": "flash_attention",
    "flash_attention_backward": "flash_attention",
    "token_log_probs": "likelihood",
    "sequence_log_prob": "likelihood",
    "perplexity": "likelihood",
    "bits_per_token": "likelihood",
    "TransformerLM": "transformer",
    "LSTMLM": "lstm",
    "TransformerEncoder": "encoder",
    "accuracy": "metrics",
    "next_token_accuracy": "metrics",
    "top_k_accuracy": "metrics",
    "confusion_matrix": "metrics",
    "precision_recall_f1": "metrics",
    "generate": "generate",
}
_SUBMODULES = {"functional", "attention", "flash_attention", "likelihood", "layers",
               "transformer", "encoder", "metrics", "lstm", "generate", "optim", "train"}
_SUBMODULES |= {"quantize", "prune"}  # compression (issue 11): minilm.numpy.quantize, .prune

__all__ = sorted(_EXPORTS)

# Two functions share their module's name: flash_attention and generate. Importing a
# submodule sets the package attribute of its name to the module, so had anything imported
# minilm.numpy.flash_attention (or .generate) before the first lookup of the function, the
# attribute would be the module and calling it would raise TypeError. Importing both
# functions here, before anything else can import those submodules, makes the function win
# in every import order: a later import of the submodule finds it in sys.modules and leaves
# the attribute alone. This imports numpy and minilm.config, nothing else.
from minilm.numpy.flash_attention import flash_attention, flash_attention_backward  # noqa: E402
from minilm.numpy.generate import generate  # noqa: E402


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
