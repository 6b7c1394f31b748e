"""Data for minilm: tokenizers, corpora, batching, and a synthetic source with a known answer.

| module | what |
| --- | --- |
| ``minilm.data.tokenizer`` | the shared base: special tokens, the JSON file, ``load_tokenizer`` |
| ``minilm.data.char`` | ``CharTokenizer``: one id per character |
| ``minilm.data.bpe`` | ``BPETokenizer``: byte-level byte-pair encoding |
| ``minilm.data.corpus`` | ``load_corpus``: ``"builtin"``, ``"tinyshakespeare"`` or a text file |
| ``minilm.data.batching`` | ``train_val_split``, ``get_batch``, ``iter_batches``, ``pad_batch`` |
| ``minilm.data.synthetic`` | ``MarkovSource``: Markov-chain text with an exactly known entropy rate |
| ``minilm.data.mlm`` | ``mask_tokens`` (BERT's 15 % / 80-10-10 recipe), ``nsp_pairs``, ``single_segments`` |
| ``minilm.data.speakers`` | ``speaker_task``: who speaks this tinyshakespeare speech, split without leaks |
| ``minilm.data.markov_task`` | ``markov_task``: which Markov source wrote this string (a quick labelled task) |

Needs only NumPy and the standard library.
"""

from minilm.data.batching import causal_key_mask, get_batch, iter_batches, pad_batch, train_val_split
from minilm.data.bpe import GPT2_PATTERN, GPT2_SPLIT_PATTERN, BPETokenizer, bytes_to_unicode
from minilm.data.char import CharTokenizer
from minilm.data.corpus import CORPORA, corpus_names, load_corpus
from minilm.data.synthetic import MarkovSource
from minilm.data.mlm import ENCODER_SPECIALS, EncoderBatch, mask_tokens, nsp_pairs, single_segments
from minilm.data.speakers import SpeakerTask, speaker_task
from minilm.data.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    ENCODER_SPECIAL_TOKENS,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "Tokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "GPT2_SPLIT_PATTERN",
    "GPT2_PATTERN",
    "bytes_to_unicode",
    "DEFAULT_SPECIAL_TOKENS",
    "ENCODER_SPECIAL_TOKENS",
    "load_tokenizer",
    "tokenizer_from_dict",
    "load_corpus",
    "corpus_names",
    "CORPORA",
    "train_val_split",
    "get_batch",
    "iter_batches",
    "pad_batch",
    "causal_key_mask",
    "MarkovSource",
    "ENCODER_SPECIALS",
    "EncoderBatch",
    "mask_tokens",
    "nsp_pairs",
    "single_segments",
    "SpeakerTask",
    "speaker_task",
]
