"""minilm.torch: the PyTorch twins of minilm.numpy, same names, same arguments, same weights.

Every name here is the twin of the NumPy reference of the same name in ``minilm.numpy``;
backward passes come from autograd, so there are no ``*_backward`` functions.
Imports torch. Never run a file in this folder as a script (the folder would shadow
torch itself): use ``python -m``.

| name | module |
| --- | --- |
| softmax, log_softmax, cross_entropy | functional |
| scaled_dot_product_attention, split_heads, merge_heads | attention |
| flash_attention | flash_attention |
| token_log_probs, sequence_log_prob, perplexity, bits_per_token | likelihood |
| TransformerLM | transformer |
| LSTMLM | lstm |
| TransformerEncoder | encoder |
| accuracy, next_token_accuracy, top_k_accuracy, confusion_matrix, precision_recall_f1 | metrics |
| generate | generate |
| (submodule) quantize, dequantize, quantize_activations, int8_matmul, dynamic_quantize (torch.ao peer), QuantizedTransformerLM | quantize |
| (submodule) Masks, magnitude_masks, prune_heads, prune_neurons, finetune | prune |
| (optimisers: torch.optim) | |
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it; imported on first use (PEP 562), so each idea's module
# stays independent (all but the two imported eagerly below).
_EXPORTS = {
    "softmax": "functional",
    "log_softmax": "functional",
    "cross_entropy": "functional",
    "scaled_dot_product_attention": "attention",
    "split_heads": "attention",
    "merge_heads": "attention",
    "flash_attention": "flash_attention",
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
               "transformer", "encoder", "metrics", "lstm", "generate", "train"}
_SUBMODULES |= {"quantize", "prune"}  # compression (issue 11): minilm.torch.quantize, .prune

__all__ = sorted(_EXPORTS)

# Two functions share their module's name: flash_attention and generate. Importing a
# submodule sets the package attribute of its name to the module, so had anything imported
# minilm.torch.flash_attention (or .generate) before the first lookup of the function, the
# attribute would be the module and calling it would raise TypeError. Importing both
# functions here, before anything else can import those submodules, makes the function win
# in every import order: a later import of the submodule finds it in sys.modules and leaves
# the attribute alone. This imports torch, which minilm.torch needs anyway.
from minilm.torch.flash_attention import flash_attention  # noqa: E402
from minilm.torch.generate import generate  # noqa: E402


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
