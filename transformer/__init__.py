"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) in JAX and Flax NNX.

Public API: `TransformerConfig` and the three model families, plus `decoding` (greedy, beam
search, sampling). Training lives in `transformer.training`, data in `transformer.data`.
"""

from transformer import decoding
from transformer.model import DecoderOnly
from transformer.model import EncoderDecoder
from transformer.model import EncoderOnly
from transformer.model import TransformerConfig

__all__ = ["TransformerConfig", "EncoderDecoder", "DecoderOnly", "EncoderOnly", "decoding"]
