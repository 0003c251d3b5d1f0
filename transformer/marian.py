"""Weights and hyperparameters of Marian models (transformers' `MarianMTModel`, the opus-mt
models) in this package's layout, both ways; pure numpy, no torch or transformers needed.

Marian is the paper's architecture (post-LN, sinusoidal positions, embeddings scaled by sqrt(D),
shared and tied embeddings), so the conversion is a renaming plus two fixed permutations:

S is `encoder` or `decoder`, L our `S.layers.i`, M Marian's `model.S.layers.i`; "ids" means
rows (or entries) reordered by the id map, P the model-dimension permutation (both below).

| ours (`nnx.to_pure_dict` path)          | Marian (state-dict name)                   | how       |
| --------------------------------------- | ------------------------------------------ | --------- |
| S_embedding.embedding.table (V, D)      | model.shared / model.S.embed_tokens.weight | ids, P    |
| output_projection.bias (V,)             | final_logits_bias (1, V)                   | ids       |
| output_projection.kernel (D, V)         | lm_head.weight (V, D), untied models only  | .T, ids, P|
| L.self_attention.query_kernel (D, N, H) | M.self_attn.q_proj.weight (N*H, D)         | .T, P     |
| L.self_attention.query_bias (N, H)      | M.self_attn.q_proj.bias (N*H,)             | reshape   |
| L.self_attention.key_* / value_*        | M.self_attn.k_proj.* / v_proj.*            | as query  |
| L.self_attention.out_kernel (N, H, D)   | M.self_attn.out_proj.weight (D, N*H)       | .T, P     |
| L.self_attention.out_bias (D,)          | M.self_attn.out_proj.bias (D,)             | P         |
| L.cross_attention.*                     | M.encoder_attn.*                           | as above  |
| L.self_residual.norm.{scale, bias}      | M.self_attn_layer_norm.{weight, bias}      | P         |
| L.cross_residual.norm.*                 | M.encoder_attn_layer_norm.*                | P         |
| L.feed_forward.w1 (D, F), b1 (F,)       | M.fc1.weight (F, D), M.fc1.bias            | .T, P     |
| L.feed_forward.w2 (F, D), b2 (D,)       | M.fc2.weight (D, F), M.fc2.bias            | .T, P     |
| L.ff_residual.norm.*                    | M.final_layer_norm.*                       | P         |
| (fixed, interleaved sinusoids)          | model.S.embed_positions.weight (L, D)      | P, fold   |

P, the model-dimension permutation: our position encoding interleaves sin and cos (dimension
2j is sin(pos / 10000^(2j/D)), 2j+1 its cos), Marian's puts the sines in the first half and the
cosines in the second. Our dimension i is Marian's dimension P[i] = i // 2 + (i % 2) * D / 2.
Every weight is permuted along each of its D axes (layer norm statistics over D are
permutation-invariant), so the imported model computes the same function, exactly.

Ids (see `transformer.data.tokenizer.marian_id_map`): ours are PAD 0, UNK 1, BOS 2, EOS 3, then
Marian's other ids in order. Marian has no BOS: its decoder starts from `decoder_start_token_id`
(= its PAD), so on import our BOS row is a copy of that row (V_ours = V_Marian + 1). On export
our PAD row is dropped, EOS / UNK become Marian ids 0 / 1 and PAD the last id (the opus-mt
layout, which CTranslate2 expects). CTranslate2 starts Marian decoders from a zero vector, so the
export writes a zero start row and adds our scaled BOS embedding to the decoder's position-0
vector instead ("fold"; position 0 always holds the start token): transformers and CTranslate2 then
compute what we compute. The import undoes that fold.

LayerNorm epsilon: transformers' Marian layers use torch's default 1e-5 (not configurable);
imported models get `layer_norm_epsilon=1e-5`.
"""

import math

import numpy as np

# Marian activation names -> ours ("swish" is x * sigmoid(x), i.e. SiLU).
ACTIVATIONS_FROM_MARIAN = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu"}
ACTIVATIONS_TO_MARIAN = {"silu": "swish", "gelu": "gelu", "relu": "relu"}
MARIAN_LAYER_NORM_EPSILON = 1e-5
# Config flags of Marian variants this layout cannot represent, and their only accepted value.
_UNSUPPORTED_FLAGS = {
    "normalize_before": False,  # pre-LN variant
    "normalize_embedding": False,  # layer norm on embeddings
    "add_final_layer_norm": False,  # final norm of pre-LN stacks
    "scale_embedding": True,  # embeddings times sqrt(D)
    "static_position_embeddings": True,  # sinusoidal, not learned, positions
}
_POSITION_TOLERANCE = 1e-4


class ConversionError(ValueError):
  """The model cannot be converted; the message names the problem."""


def dimension_permutation(d_model: int) -> np.ndarray:
  """P (D,): our model dimension i is Marian's dimension P[i]."""
  i = np.arange(d_model)
  return i // 2 + (i % 2) * (d_model // 2)


def marian_sinusoids(num_positions: int, d_model: int) -> np.ndarray:
  """Marian's position table (L, D) float32: sines in the first half, cosines in the second."""
  position = np.arange(num_positions, dtype=np.float64)[:, None]
  j = np.arange(d_model)
  angles = position / np.power(10000, 2 * (j // 2) / d_model)[None, :]  # (L, D)
  half = d_model // 2
  table = np.empty((num_positions, d_model), np.float32)
  table[:, :half] = np.sin(angles[:, 0::2])
  table[:, half:] = np.cos(angles[:, 1::2])
  return table


def check_config(config: dict) -> None:
  """Raises ConversionError naming the first option of a Marian config we cannot represent."""
  model_type = config.get("model_type")
  if model_type != "marian":
    raise ConversionError(f"config.json has model_type={model_type!r}; only Marian models "
                          "('marian', MarianMTModel) can be imported")
  for flag, supported in _UNSUPPORTED_FLAGS.items():
    if flag in config and bool(config[flag]) != supported:
      raise ConversionError(f"unsupported Marian option {flag}={config[flag]!r} (only "
                            f"{supported} can be imported)")
  activation = config.get("activation_function", "swish")
  if activation not in ACTIVATIONS_FROM_MARIAN:
    raise ConversionError(f"unsupported activation_function={activation!r}; supported: "
                          f"{sorted(ACTIVATIONS_FROM_MARIAN)}")
  for ours, theirs in (("encoder_attention_heads", "decoder_attention_heads"),
                       ("encoder_ffn_dim", "decoder_ffn_dim")):
    if config.get(ours) != config.get(theirs):
      raise ConversionError(f"{ours}={config.get(ours)} differs from {theirs}="
                            f"{config.get(theirs)}; both stacks must have the same shape")
  if config["d_model"] % 2:
    raise ConversionError(f"d_model={config['d_model']} must be even for sinusoidal positions")


def vocab_sizes(config: dict) -> tuple[int, int]:
  """(source, target) Marian vocabulary sizes."""
  source = config["vocab_size"]
  return source, config.get("decoder_vocab_size") or source


def model_fields(config: dict) -> dict:
  """Our `config.model` section for a Marian config (without vocabulary sizes and ids)."""
  check_config(config)
  return dict(
      d_model=config["d_model"],
      num_heads=config["encoder_attention_heads"],
      d_ff=config["encoder_ffn_dim"],
      num_encoder_layers=config["encoder_layers"],
      num_decoder_layers=config["decoder_layers"],
      dropout_rate=float(config.get("dropout", 0.1)),
      attention_dropout_rate=float(config.get("attention_dropout", 0.0)),
      max_len=config["max_position_embeddings"],
      norm_placement="post",
      activation=ACTIVATIONS_FROM_MARIAN[config.get("activation_function", "swish")],
      position_encoding="sinusoidal",
      share_embeddings=bool(config.get("share_encoder_decoder_embeddings", True)),
      tie_output_projection=bool(config.get("tie_word_embeddings", True)),
      output_bias=True,
      layer_norm_epsilon=MARIAN_LAYER_NORM_EPSILON,
      dtype="float32",
      param_dtype="float32",
      attention_impl="xla",
  )


def _first(weights: dict, names: list[str]) -> np.ndarray:
  for name in names:
    if name in weights:
      return np.asarray(weights[name], np.float32)
  raise ConversionError(f"the checkpoint has none of the weights {names}")


def _attention_in(weights, prefix, perm, num_heads):
  """Our attention parameters from Marian's q/k/v/out projections under `prefix`."""
  out = {}
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    w = _first(weights, [f"{prefix}.{theirs}.weight"])  # (N*H, D)
    b = _first(weights, [f"{prefix}.{theirs}.bias"])
    d = w.shape[1]
    out[f"{ours}_kernel"] = w.T[perm].reshape(d, num_heads, -1)  # (D, N, H)
    out[f"{ours}_bias"] = b.reshape(num_heads, -1)  # (N, H)
  w = _first(weights, [f"{prefix}.out_proj.weight"])  # (D, N*H)
  d = w.shape[0]
  out["out_kernel"] = w.T[:, perm].reshape(num_heads, -1, d)  # (N, H, D)
  out["out_bias"] = _first(weights, [f"{prefix}.out_proj.bias"])[perm]
  return out


def _norm_in(weights, prefix, perm):
  return {"norm": {"scale": _first(weights, [f"{prefix}.weight"])[perm],
                   "bias": _first(weights, [f"{prefix}.bias"])[perm]}}


def _feed_forward_in(weights, prefix, perm):
  return {
      "w1": _first(weights, [f"{prefix}.fc1.weight"]).T[perm],  # (D, F)
      "b1": _first(weights, [f"{prefix}.fc1.bias"]),
      "w2": _first(weights, [f"{prefix}.fc2.weight"]).T[:, perm],  # (F, D)
      "b2": _first(weights, [f"{prefix}.fc2.bias"])[perm],
  }


def _check_positions(weights: dict, config: dict) -> np.ndarray:
  """Checks Marian's stored position tables; returns the decoder's position-0 surplus (D,).

  The surplus is what our export folded into position 0 (the scaled BOS embedding); zero for
  models that start from their PAD embedding.
  """
  length, d = config["max_position_embeddings"], config["d_model"]
  expected = marian_sinusoids(length, d)
  surplus = np.zeros(d, np.float32)
  for stack in ("encoder", "decoder"):
    name = f"model.{stack}.embed_positions.weight"
    if name not in weights:
      continue  # transformers recomputes the table.
    table = np.asarray(weights[name], np.float32)
    if table.shape != expected.shape:
      raise ConversionError(f"{name} has shape {table.shape}, expected {expected.shape}")
    start = 1 if stack == "decoder" else 0
    error = float(np.max(np.abs(table[start:] - expected[start:]), initial=0.0))
    if error > _POSITION_TOLERANCE:
      raise ConversionError(f"{name} is not Marian's sinusoidal table (max difference {error:.3g});"
                            " learned positions are not supported")
    if stack == "decoder":
      surplus = table[0] - expected[0]
  return surplus


def _sublayers(cross_attention: bool) -> list[tuple[str, str, str]]:
  """(our name, Marian name suffix, kind) of one layer's sublayers, in Marian's order.

  Encoder and decoder layers share this list; the decoder adds cross-attention after its
  self-attention.
  """
  parts = [("self_attention", ".self_attn", "attention"),
           ("self_residual", ".self_attn_layer_norm", "norm")]
  if cross_attention:
    parts += [("cross_attention", ".encoder_attn", "attention"),
              ("cross_residual", ".encoder_attn_layer_norm", "norm")]
  parts += [("feed_forward", "", "feed_forward"),
            ("ff_residual", ".final_layer_norm", "norm")]
  return parts


def _layer_in(weights, prefix, perm, num_heads, cross_attention):
  """Our parameters of one encoder or decoder layer from Marian's weights under `prefix`."""
  readers = {
      "attention": lambda name: _attention_in(weights, name, perm, num_heads),
      "norm": lambda name: _norm_in(weights, name, perm),
      "feed_forward": lambda name: _feed_forward_in(weights, name, perm),
  }
  return {ours: readers[kind](prefix + suffix)
          for ours, suffix, kind in _sublayers(cross_attention)}


def _stack_in(weights, stack, num_layers, perm, num_heads):
  """Our `encoder` or `decoder` (`stack`) parameters: {"layers": {i: layer}}."""
  return {"layers": {
      i: _layer_in(weights, f"model.{stack}.layers.{i}", perm, num_heads, stack == "decoder")
      for i in range(num_layers)}}


def _embeddings_in(source_table, target_table, source_map, target_map, perm, surplus, share):
  """Our `decoder_embedding` (and, unless shared, `encoder_embedding`) parameters."""
  scale = np.float32(math.sqrt(len(perm)))
  start = int(target_map[2])
  rows = target_table[target_map][:, perm]  # (V_ours, D)
  # Undo the export's fold: start row + surplus / sqrt(D) (the surplus is 0 otherwise).
  rows[2] = target_table[start][perm] + surplus[perm] / scale
  params = {"decoder_embedding": {"embedding": {"table": rows}}}
  if not share:
    params["encoder_embedding"] = {"embedding": {"table": source_table[source_map][:, perm]}}
  elif source_map.shape != target_map.shape or np.any(source_map != target_map):
    raise ConversionError("shared embeddings need one vocabulary, but the id maps differ")
  return params


def _output_in(weights, target_map, perm, tied, target_vocab_size):
  """Our `output_projection` parameters: the bias, and the kernel of untied models."""
  output = {}
  if not tied:
    lm_head = _first(weights, ["lm_head.weight"])  # (V, D)
    output["kernel"] = lm_head[target_map][:, perm].T  # (D, V_ours)
  if "final_logits_bias" in weights:
    bias = np.asarray(weights["final_logits_bias"], np.float32).reshape(-1)
  else:
    bias = np.zeros(target_vocab_size, np.float32)
  output["bias"] = bias[target_map]
  return output


def params_from_marian(weights: dict, config: dict, source_map: np.ndarray,
                       target_map: np.ndarray) -> dict:
  """Our parameters (an `nnx.to_pure_dict` tree of float32 numpy arrays) from Marian weights.

  Args:
    weights: state-dict name -> array, as `model.safetensors` or `pytorch_model.bin` holds.
    config: the Marian config.json.
    source_map, target_map: our id -> Marian id (`tokenizer.marian_id_map`), (V_ours,).

  Returns:
    The nested dict of `EncoderDecoder` parameters for `model_fields(config)`.
  """
  fields = model_fields(config)
  share, n = fields["share_embeddings"], fields["num_heads"]
  perm = dimension_permutation(fields["d_model"])
  surplus = _check_positions(weights, config)
  source_table = _first(weights, ["model.shared.weight", "model.encoder.embed_tokens.weight"])
  if share:
    target_table = source_table
  else:
    target_table = _first(weights, ["model.decoder.embed_tokens.weight"])
  params = _embeddings_in(source_table, target_table, source_map, target_map, perm, surplus,
                          share)
  params["encoder"] = _stack_in(weights, "encoder", fields["num_encoder_layers"], perm, n)
  params["decoder"] = _stack_in(weights, "decoder", fields["num_decoder_layers"], perm, n)
  params["output_projection"] = _output_in(weights, target_map, perm,
                                           fields["tie_output_projection"], target_table.shape[0])
  return params


def _attention_out(params, prefix, perm):
  out = {}
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    kernel = np.asarray(params[f"{ours}_kernel"], np.float32)  # (D, N, H)
    d = kernel.shape[0]
    w = np.empty((d, d), np.float32)
    w[perm] = kernel.reshape(d, -1)  # Marian's input dimension P[i] is our i.
    out[f"{prefix}.{theirs}.weight"] = w.T  # (N*H, D)
    out[f"{prefix}.{theirs}.bias"] = np.asarray(params[f"{ours}_bias"], np.float32).reshape(-1)
  kernel = np.asarray(params["out_kernel"], np.float32)  # (N, H, D)
  d = kernel.shape[-1]
  w = np.empty((d, d), np.float32)
  w[:, perm] = kernel.reshape(-1, d)
  out[f"{prefix}.out_proj.weight"] = w.T  # (D, N*H)
  out[f"{prefix}.out_proj.bias"] = _unpermute(params["out_bias"], perm)
  return out


def _unpermute(x, perm):
  """Marian-layout vector from ours: y[P[i]] = x[i]."""
  x = np.asarray(x, np.float32)
  y = np.empty_like(x)
  y[perm] = x
  return y


def _norm_out(params, prefix, perm):
  return {f"{prefix}.weight": _unpermute(params["norm"]["scale"], perm),
          f"{prefix}.bias": _unpermute(params["norm"]["bias"], perm)}


def _feed_forward_out(params, prefix, perm):
  w1 = np.asarray(params["w1"], np.float32)  # (D, F)
  w1_marian = np.empty_like(w1)
  w1_marian[perm] = w1
  w2 = np.asarray(params["w2"], np.float32)  # (F, D)
  w2_marian = np.empty_like(w2)
  w2_marian[:, perm] = w2
  return {
      f"{prefix}.fc1.weight": w1_marian.T,
      f"{prefix}.fc1.bias": np.asarray(params["b1"], np.float32),
      f"{prefix}.fc2.weight": w2_marian.T,
      f"{prefix}.fc2.bias": _unpermute(params["b2"], perm),
  }


def _layer_out(layer, prefix, perm, cross_attention):
  """Marian weights of one encoder or decoder layer (our `layer` parameters) under `prefix`."""
  writers = {"attention": _attention_out, "norm": _norm_out, "feed_forward": _feed_forward_out}
  weights = {}
  for ours, suffix, kind in _sublayers(cross_attention):
    weights.update(writers[kind](layer[ours], prefix + suffix, perm))
  return weights


def _stack_out(stack_params, stack, num_layers, perm):
  """Marian weights of every layer of our `encoder` or `decoder` (`stack`) parameters."""
  weights = {}
  for i in range(num_layers):
    weights.update(_layer_out(stack_params["layers"][i], f"model.{stack}.layers.{i}", perm,
                              stack == "decoder"))
  return weights


def _marian_table(table, rows, perm):
  """(len(rows), D) float32: row m is our row rows[m] with its dimensions in Marian's order."""
  out = np.empty((len(rows), len(perm)), np.float32)
  out[:, perm] = table[rows]
  return out


def _embeddings_out(params, fields, source_rows, target_rows, target_start, perm):
  """Marian's token and position tables; the BOS embedding folded into decoder position 0."""
  scale = np.float32(math.sqrt(len(perm)))
  target_table = np.asarray(params["decoder_embedding"]["embedding"]["table"], np.float32)
  if fields["share_embeddings"]:
    source_table = target_table
  else:
    source_table = np.asarray(params["encoder_embedding"]["embedding"]["table"], np.float32)
  decoder_tokens = _marian_table(target_table, target_rows, perm)
  bos = decoder_tokens[target_start].copy()
  decoder_tokens[target_start] = 0.0
  encoder_tokens = decoder_tokens if fields["share_embeddings"] else _marian_table(
      source_table, source_rows, perm)
  encoder_positions = marian_sinusoids(fields["max_len"], len(perm))
  decoder_positions = encoder_positions.copy()
  # Same float32 operations as the decoder input, bos * sqrt(D) + position.
  decoder_positions[0] = bos * scale + decoder_positions[0]
  weights = {
      "model.encoder.embed_tokens.weight": encoder_tokens,
      "model.decoder.embed_tokens.weight": decoder_tokens,
      "model.encoder.embed_positions.weight": encoder_positions,
      "model.decoder.embed_positions.weight": decoder_positions,
  }
  if fields["share_embeddings"]:
    weights["model.shared.weight"] = decoder_tokens
  return weights


def _output_out(params, fields, decoder_tokens, target_rows, perm):
  """Marian's `lm_head.weight` (the decoder tokens when tied) and `final_logits_bias` (1, V)."""
  output = params.get("output_projection", {})
  weights = {}
  if fields["tie_output_projection"]:
    weights["lm_head.weight"] = decoder_tokens
  else:
    kernel = np.asarray(output["kernel"], np.float32)  # (D, V_ours)
    weights["lm_head.weight"] = _marian_table(kernel.T, target_rows, perm)
  if "bias" in output:
    bias = np.asarray(output["bias"], np.float32)[target_rows]
  else:
    bias = np.zeros(len(target_rows), np.float32)
  weights["final_logits_bias"] = bias[None, :]
  return weights


def marian_from_params(params: dict, fields: dict, source_rows: np.ndarray,
                       target_rows: np.ndarray, *, target_start: int) -> dict:
  """Marian weights (state-dict name -> float32 array) from our parameters.

  Args:
    params: our `EncoderDecoder` parameters as an `nnx.to_pure_dict` tree.
    fields: our model hyperparameters (`TransformerConfig` fields as a dict).
    source_rows, target_rows: (V_Marian,): Marian id m takes our row rows[m].
    target_start: Marian's decoder start id; its row is zero and our BOS embedding (which
      target_rows names there) moves into the decoder's position-0 vector.

  Returns:
    Every weight `MarianMTModel.state_dict()` saves, tied ones once per name.
  """
  perm = dimension_permutation(fields["d_model"])
  weights = _embeddings_out(params, fields, source_rows, target_rows, target_start, perm)
  weights.update(_stack_out(params["encoder"], "encoder", fields["num_encoder_layers"], perm))
  weights.update(_stack_out(params["decoder"], "decoder", fields["num_decoder_layers"], perm))
  weights.update(_output_out(params, fields, weights["model.decoder.embed_tokens.weight"],
                             target_rows, perm))
  return {name: np.ascontiguousarray(w) for name, w in weights.items()}


def marian_config(fields: dict, *, source_vocab_size: int, target_vocab_size: int, eos_id: int,
                  unk_id: int, pad_id: int) -> dict:
  """A MarianMTModel config.json for our hyperparameters (post-LN and sinusoidal only)."""
  if fields["norm_placement"] != "post":
    raise ConversionError(f"norm_placement={fields['norm_placement']!r}: Marian is post-LN")
  if fields["position_encoding"] != "sinusoidal":
    raise ConversionError(
        f"position_encoding={fields['position_encoding']!r}: Marian has sinusoidal positions")
  return {
      "architectures": ["MarianMTModel"],
      "model_type": "marian",
      "vocab_size": source_vocab_size,
      "decoder_vocab_size": target_vocab_size,
      "d_model": fields["d_model"],
      "encoder_layers": fields["num_encoder_layers"],
      "decoder_layers": fields["num_decoder_layers"],
      "encoder_attention_heads": fields["num_heads"],
      "decoder_attention_heads": fields["num_heads"],
      "encoder_ffn_dim": fields["d_ff"],
      "decoder_ffn_dim": fields["d_ff"],
      "activation_function": ACTIVATIONS_TO_MARIAN[fields["activation"]],
      "dropout": fields["dropout_rate"],
      "attention_dropout": fields["attention_dropout_rate"],
      "activation_dropout": 0.0,
      "encoder_layerdrop": 0.0,
      "decoder_layerdrop": 0.0,
      "max_position_embeddings": fields["max_len"],
      "init_std": 0.02,
      "scale_embedding": True,
      "share_encoder_decoder_embeddings": fields["share_embeddings"],
      "tie_word_embeddings": fields["tie_output_projection"],
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": pad_id,
      "eos_token_id": eos_id,
      "decoder_start_token_id": pad_id,
      "forced_eos_token_id": eos_id,
      "unk_token_id": unk_id,
      "torch_dtype": "float32",
  }

