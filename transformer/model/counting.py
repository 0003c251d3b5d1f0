"""Parameter counts: measured from a model or its parameters (in total and per top-level
group), and in closed form from a `TransformerConfig`.
"""

import jax
from flax import nnx

from transformer.model import config as config_lib

FAMILIES = ("encoder_decoder", "decoder_only", "encoder_only")


def count_params_by_group(params: nnx.State) -> dict[str, int]:
  """Number of scalar parameters per top-level group (e.g. "encoder", "decoder") plus "total".

  Args:
    params: the `nnx.Param` state of a model (`nnx.state(model, nnx.Param)`, or
      `TrainState.params`); abstract leaves (`jax.ShapeDtypeStruct`) count too.

  Returns:
    group name -> count, in the order the groups first appear, then "total": their sum.
  """
  counts = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    group = str(getattr(path[0], "key", getattr(path[0], "name", path[0])))
    counts[group] = counts.get(group, 0) + int(leaf.size)
  counts["total"] = sum(counts.values())
  return counts


def count_params(model: nnx.Module) -> int:
  """Number of scalar parameters (`nnx.Param` leaves; shared embeddings counted once).

  Works on abstract models too (`nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=...))`).
  """
  return count_params_by_group(nnx.state(model, nnx.Param))["total"]


def closed_form_param_count(config: config_lib.TransformerConfig, family: str) -> int:
  """Parameter count of a model family from its hyperparameters alone.

  Args:
    config: the model configuration.
    family: "encoder_decoder", "decoder_only" or "encoder_only".

  Returns:
    The number of scalar parameters the family's constructor creates.
  """
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
  d, f, v = config.d_model, config.d_ff, config.vocab_size
  attention = 4 * (d * d + d)  # Q, K, V, output kernels (H * N = D) and biases.
  feed_forward = d * f + f + f * d + d
  norm = 2 * d
  encoder_layer = attention + feed_forward + 2 * norm
  decoder_layer = 2 * attention + feed_forward + 3 * norm
  final_norm = norm if config.norm_placement == "pre" else 0
  positions = config.max_len * d if config.position_encoding == "learned" else 0
  output = (0 if config.tie_output_projection else d * v) + (v if config.output_bias else 0)
  if family == "encoder_decoder":
    embeddings = config.source_vocab_size * d + (0 if config.share_embeddings else v * d)
    encoder = config.num_encoder_layers * encoder_layer + final_norm
    decoder = config.num_decoder_layers * decoder_layer + final_norm
    return embeddings + 2 * positions + encoder + decoder + output
  if family == "decoder_only":
    decoder_layer -= attention + norm  # No cross-attention sub-layer.
    return v * d + positions + config.num_decoder_layers * decoder_layer + final_norm + output
  mlm_head = d * d + d + norm + v
  return (v * d + positions + config.num_encoder_layers * encoder_layer + final_norm + mlm_head
          + output)
