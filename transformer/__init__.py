"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) in JAX and Flax NNX.

Public API: `TransformerConfig` and the three model families, plus `decoding` (greedy, beam
search, sampling), and `Translator` (a trained run as a Python object; imported on first use,
since it brings the training stack). Training lives in `transformer.training`, data in
`transformer.data`.
"""

from transformer import decoding
from transformer.model import DecoderOnly
from transformer.model import EncoderDecoder
from transformer.model import EncoderOnly
from transformer.model import TransformerConfig

__all__ = ["TransformerConfig", "EncoderDecoder", "DecoderOnly", "EncoderOnly", "decoding",
           "Translator"]


def __getattr__(name: str):
  if name == "Translator":
    from transformer.translator import Translator  # pylint: disable=import-outside-toplevel
    return Translator
  raise AttributeError(f"module 'transformer' has no attribute {name!r}")
