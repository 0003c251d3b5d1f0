"""Model hyperparameters of "Attention Is All You Need" (Vaswani et al., 2017): one frozen
dataclass.

Only hyperparameters live here; modes (`deterministic`, caches) are call arguments.
"""

import dataclasses

import jax.numpy as jnp

from transformer.model import attention as attention_lib
from transformer.model import layers

# Where each sub-layer's LayerNorm sits (`blocks.ResidualSublayer`); the other allowed values
# are defined by the modules that implement them: `layers.ACTIVATIONS`,
# `layers.POSITION_ENCODINGS` and `attention.IMPLEMENTATIONS`.
NORM_PLACEMENTS = ("post", "pre")
# Compute dtypes: softmax, norms, logits and losses run in float32 whatever the compute dtype, so
# float64 would be float64 in name only.
_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters shared by `EncoderDecoder`, `DecoderOnly` and `EncoderOnly`.

  Defaults are the paper's base model (section 3 and table 3), except `vocab_size`, which has
  no default. Presets: `base`, `big` (paper), `small` (CPU experiments), `tiny` (tests).
  """

  # Target vocabulary size V (also the source vocabulary unless `input_vocab_size` is set).
  vocab_size: int
  # Source vocabulary size of `EncoderDecoder`; None means "same as vocab_size".
  input_vocab_size: int | None = None
  # Model width D (d_model in the paper).
  d_model: int = 512
  # Number of attention heads N; the head width is H = D / N.
  num_heads: int = 8
  # Inner width F of the position-wise feed-forward network (d_ff).
  d_ff: int = 2048
  # Layers in the encoder stack (EncoderDecoder, EncoderOnly).
  num_encoder_layers: int = 6
  # Layers in the decoder stack (EncoderDecoder, DecoderOnly).
  num_decoder_layers: int = 6
  # Dropout on every sub-layer output and on embedding + position sums (P_drop, section 5.4).
  dropout_rate: float = 0.1
  # Dropout on attention weights; the paper uses none. Non-zero forces the explicit softmax path
  # while training (deterministic=False), since fused kernels have no attention dropout.
  attention_dropout_rate: float = 0.0
  # Largest position (exclusive) the model embeds: the learned table size and the decode limit.
  max_len: int = 512
  # "post": x = LayerNorm(x + Dropout(Sublayer(x))) as in the paper; "pre": x = x +
  # Dropout(Sublayer(LayerNorm(x))) with one final LayerNorm after each stack.
  norm_placement: str = "post"
  # Feed-forward activation: "relu" (paper), "gelu" (exact erf) or "silu" (x * sigmoid(x), which
  # Marian models call "swish").
  activation: str = "relu"
  # Position information: "sinusoidal" (paper, section 3.5) or "learned" embeddings.
  position_encoding: str = "sinusoidal"
  # One embedding matrix for source and target tokens (requires equal vocabularies).
  share_embeddings: bool = True
  # Logits through the transposed target embedding matrix (section 3.4); else a separate matrix.
  tie_output_projection: bool = True
  # A learned bias (V,) added to the output logits (Marian's `final_logits_bias`).
  output_bias: bool = False
  # LayerNorm epsilon.
  layer_norm_epsilon: float = 1e-6
  # Compute dtype of activations and matmuls ("float32", "bfloat16"); softmax, norms, logits
  # and losses stay float32.
  dtype: str = "float32"
  # Storage dtype of parameters.
  param_dtype: str = "float32"
  # Attention kernel: "xla" (jax.nn.dot_product_attention, portable), "cudnn" (fused
  # flash attention, GPU only, bf16/fp16 compute), "reference" (plain jnp, for tests/teaching).
  attention_impl: str = "xla"
  # Special token ids; training passes the tokenizer's values.
  pad_id: int = 0
  bos_id: int = 2
  eos_id: int = 3

  def __post_init__(self):
    if self.vocab_size <= 0:
      raise ValueError(f"vocab_size must be positive, got {self.vocab_size}")
    if self.input_vocab_size is not None and self.input_vocab_size <= 0:
      raise ValueError(f"input_vocab_size must be positive, got {self.input_vocab_size}")
    if self.d_model % self.num_heads:
      raise ValueError(
          f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}"
      )
    if self.position_encoding == "sinusoidal" and self.d_model % 2:
      raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
    for name in ("d_ff", "max_len", "num_heads"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    for name in ("num_encoder_layers", "num_decoder_layers"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
    for name, allowed in (
        ("norm_placement", NORM_PLACEMENTS),
        ("activation", tuple(layers.ACTIVATIONS)),
        ("position_encoding", layers.POSITION_ENCODINGS),
        ("attention_impl", attention_lib.IMPLEMENTATIONS),
    ):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
    if self.share_embeddings and self.source_vocab_size != self.vocab_size:
      raise ValueError(
          "share_embeddings=True needs equal vocabularies, got input_vocab_size="
          f"{self.input_vocab_size} and vocab_size={self.vocab_size}"
      )
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"{name}={getattr(self, name)!r} is not a dtype") from e
      if jnp.dtype(getattr(self, name)).name not in _COMPUTE_DTYPES:
        raise ValueError(
            f"{name}={getattr(self, name)!r} is not supported: use one of {_COMPUTE_DTYPES} "
            "(LayerNorm, softmax, logits and the loss always run in float32)")

  @property
  def source_vocab_size(self) -> int:
    """Source vocabulary size of `EncoderDecoder`."""
    return self.vocab_size if self.input_vocab_size is None else self.input_vocab_size

  @property
  def head_dim(self) -> int:
    """Per-head width H = d_model / num_heads (d_k = d_v in the paper)."""
    return self.d_model // self.num_heads

  @property
  def needs_dropout_rng(self) -> bool:
    """Whether any dropout in the model is active when deterministic=False."""
    return self.dropout_rate > 0.0 or self.attention_dropout_rate > 0.0

  @classmethod
  def base(cls, vocab_size: int, **overrides) -> "TransformerConfig":
    """The paper's base model: D=512, N=8, F=2048, 6+6 layers, dropout 0.1."""
    return cls(vocab_size=vocab_size, **overrides)

  @classmethod
  def big(cls, vocab_size: int, **overrides) -> "TransformerConfig":
    """The paper's big model: D=1024, N=16, F=4096, 6+6 layers, dropout 0.3."""
    values = dict(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3)
    return cls(vocab_size=vocab_size, **(values | overrides))

  @classmethod
  def small(cls, vocab_size: int, **overrides) -> "TransformerConfig":
    """A CPU-trainable model: D=256, N=4, F=1024, 3+3 layers, max_len 256."""
    values = dict(
        d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3, num_decoder_layers=3,
        max_len=256,
    )
    return cls(vocab_size=vocab_size, **(values | overrides))

  @classmethod
  def tiny(cls, vocab_size: int = 64, **overrides) -> "TransformerConfig":
    """A test-sized model: D=32, N=4, F=64, 2+2 layers, max_len 64."""
    values = dict(
        d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2, num_decoder_layers=2, max_len=64,
    )
    return cls(vocab_size=vocab_size, **(values | overrides))
