"""Matmul FLOP counts of an `EncoderDecoder` training step, for model FLOPs utilization (MFU) in
`bench/mfu.py` and `bench/train_step.py`.
"""

from transformer import model as model_lib


def encoder_decoder_forward_flops(
    config: model_lib.TransformerConfig, batch_size: int, source_length: int,
    target_length: int
) -> int:
  """Matmul FLOPs of one `EncoderDecoder` forward pass over a (B, S) / (B, T) batch.

  Convention (the usual one for MFU, e.g. the PaLM paper's appendix B): only matrix
  multiplications count, 2 FLOPs per multiply-add; embedding lookups, norms, softmax, dropout,
  biases and the loss are left out. Attention scores and weighted values count the full
  T x S (or T x T) matrices, causal or not, as a dense kernel computes them (a fused causal
  kernel skips about half of the decoder self-attention, so MFU of such a kernel is slightly
  overstated; these terms are a few percent of the total at S, T <= D). Every position counts,
  padding included: the figure is what the hardware was asked to compute.

  Per encoder layer (B S tokens): Q, K, V and output projections 4 * 2 B S D^2; scores
  Q K^T 2 B S S D; weights times values 2 B S S D; feed-forward 2 * 2 B S D F.
  Per decoder layer (B T tokens): self-attention as above with S -> T; cross-attention with
  Q and output projections 2 * 2 B T D^2, K and V projections of the encoder output
  2 * 2 B S D^2, scores and values 2 * 2 B T S D; feed-forward 2 * 2 B T D F.
  Output layer: 2 B T D V.

  Args:
    config: the model (D = d_model, F = d_ff, V = vocab_size, layer counts).
    batch_size: B.
    source_length: S.
    target_length: T.

  Returns:
    FLOPs of one forward pass.
  """
  for name, value in (("batch_size", batch_size), ("source_length", source_length),
                      ("target_length", target_length)):
    if value <= 0:
      raise ValueError(f"{name} must be positive, got {value}")
  b, s, t = batch_size, source_length, target_length
  d, f, v = config.d_model, config.d_ff, config.vocab_size
  encoder_layer = 8 * b * s * d * d + 4 * b * s * s * d + 4 * b * s * d * f
  self_attention = 8 * b * t * d * d + 4 * b * t * t * d
  cross_attention = 4 * b * t * d * d + 4 * b * s * d * d + 4 * b * t * s * d
  decoder_layer = self_attention + cross_attention + 4 * b * t * d * f
  output = 2 * b * t * d * v
  return (config.num_encoder_layers * encoder_layer + config.num_decoder_layers * decoder_layer
          + output)


def encoder_decoder_train_flops(
    config: model_lib.TransformerConfig, batch_size: int, source_length: int,
    target_length: int
) -> int:
  """Matmul FLOPs of one training step: 3x the forward pass.

  The backward pass of each matmul is two matmuls of the same size (gradients of both
  operands), so forward + backward = 3 x forward (the usual 6 N per token for the weights).
  Rematerialization, if any, is not counted: this is *model* FLOPs, not hardware FLOPs.

  Args:
    config, batch_size, source_length, target_length: as `encoder_decoder_forward_flops`.

  Returns:
    FLOPs of one forward + backward pass (the optimizer update is elementwise, not counted).
  """
  return 3 * encoder_decoder_forward_flops(config, batch_size, source_length, target_length)
