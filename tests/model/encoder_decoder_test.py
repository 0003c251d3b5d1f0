"""Invariance tests of EncoderDecoder: causality, padding, packing, caching, dropout keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import model as model_lib

BOS = 2

INPUTS = jnp.array([[5, 6, 7, 8, 3, 0, 0], [9, 10, 3, 0, 0, 0, 0]])
TARGETS = jnp.array([[11, 12, 13, 3, 0], [14, 15, 16, 17, 3]])

# One compilation per input shape instead of op-by-op dispatch keeps the tests fast.
forward = nnx.jit(model_lib.EncoderDecoder.__call__, static_argnames="deterministic")


# One layer per stack keeps compilation cheap; the caching test also covers two layers.
SMALL = dict(num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture(scope="module")
def model():
  return model_lib.EncoderDecoder(model_lib.TransformerConfig.tiny(**SMALL), rngs=nnx.Rngs(0))


def test_shift_right_unpacked_and_packed():
  targets = jnp.array([[4, 5, 3, 0], [6, 3, 7, 3]])
  np.testing.assert_array_equal(model_lib.shift_right(targets, BOS),
                                [[2, 4, 5, 3], [2, 6, 3, 7]])
  segmentation = jnp.array([[1, 1, 1, 0], [1, 1, 2, 2]])
  np.testing.assert_array_equal(model_lib.shift_right(targets, BOS, segmentation),
                                [[2, 4, 5, 0], [2, 6, 2, 7]])
  with pytest.raises(ValueError, match="shape"):
    model_lib.shift_right(targets, BOS, segmentation[:, :2])


def test_logits_are_float32_and_encode_shape(model):
  logits = forward(model, INPUTS, model_lib.shift_right(TARGETS, BOS))
  assert logits.shape == (2, 5, 64) and logits.dtype == jnp.float32
  assert model.encode(INPUTS).shape == (2, 7, 32)


def test_changing_decoder_token_j_never_changes_earlier_positions(model):
  dec = model_lib.shift_right(TARGETS, BOS)
  base = forward(model, INPUTS, dec)
  for j in range(1, 5):
    changed = forward(model, INPUTS, dec.at[:, j].set(40))
    np.testing.assert_allclose(changed[:, :j], base[:, :j], rtol=1e-5, atol=1e-5)
    assert not np.allclose(changed[:, j:], base[:, j:], atol=1e-3)


def test_changing_padded_source_tokens_changes_no_output(model):
  dec = model_lib.shift_right(TARGETS, BOS)
  segmentation = (INPUTS != 0).astype(jnp.int32)
  base = forward(model, INPUTS, dec, inputs_segmentation=segmentation)
  noisy = jnp.where(segmentation == 0, 33, INPUTS)  # garbage ids at padded positions
  np.testing.assert_allclose(forward(model, noisy, dec, inputs_segmentation=segmentation), base,
                             rtol=1e-5, atol=1e-5)
  # A real source token does matter, so the check above can fail.
  assert not np.allclose(forward(model, INPUTS.at[0, 1].set(33), dec)[0], base[0], atol=1e-3)


def test_packed_batch_equals_unpacked(model):
  src_a, tgt_a = [5, 6, 3], [11, 12, 3]
  src_b, tgt_b = [9, 3], [14, 15, 16, 3]
  packed = dict(
      inputs=jnp.array([src_a + src_b + [0]]),
      inputs_segmentation=jnp.array([[1, 1, 1, 2, 2, 0]]),
      inputs_positions=jnp.array([[0, 1, 2, 0, 1, 0]]),
      targets=jnp.array([tgt_a + tgt_b + [0]]),
      targets_segmentation=jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]]),
      targets_positions=jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]]),
  )
  dec = model_lib.shift_right(packed["targets"], BOS, packed["targets_segmentation"])
  packed_logits = forward(model, packed["inputs"], dec, packed["inputs_positions"],
                        packed["targets_positions"], packed["inputs_segmentation"],
                        packed["targets_segmentation"])
  # The same two examples as an ordinary padded batch, one example per row.
  unpacked = forward(model, jnp.array([src_a, src_b + [0]]),
                     model_lib.shift_right(jnp.array([tgt_a + [0], tgt_b]), BOS))
  np.testing.assert_allclose(packed_logits[0, 0:3], unpacked[0, :3], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed_logits[0, 3:7], unpacked[1, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    {},  # two layers per stack
    dict(norm_placement="pre", position_encoding="learned", activation="gelu",
         share_embeddings=False, tie_output_projection=False, **SMALL),
])
def test_cached_decoding_equals_teacher_forcing(overrides):
  cfg = model_lib.TransformerConfig.tiny(**overrides)
  model = model_lib.EncoderDecoder(cfg, rngs=nnx.Rngs(1))
  targets = jnp.array([[11, 12, 13, 14, 3], [14, 15, 16, 17, 3]])  # no padding: all compared
  dec = model_lib.shift_right(targets, BOS)
  full = forward(model, INPUTS, dec)
  cache = model.init_cache(INPUTS, max_decode_len=8)
  step = nnx.jit(lambda m, tokens, c: m.decode_step(tokens, c))
  for t in range(dec.shape[1]):
    logits, cache = step(model, dec[:, t], cache)
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-4)
  assert int(cache["index"]) == dec.shape[1]


def test_bad_inputs_are_rejected_clearly(model):
  with pytest.raises(ValueError, match="max_decode_len"):
    model.init_cache(INPUTS, max_decode_len=65)
  with pytest.raises(ValueError, match="max_len"):
    model(jnp.ones((1, 65), jnp.int32), INPUTS)
  with pytest.raises(ValueError, match="inputs must be int"):
    model(INPUTS.astype(jnp.float32), INPUTS)
  with pytest.raises(ValueError, match="positions shape"):
    model(INPUTS, INPUTS, inputs_positions=INPUTS[:, :2])


def test_every_parameter_gets_a_gradient(model):
  graphdef, params = nnx.split(model)
  dec = model_lib.shift_right(TARGETS, BOS)

  def loss_fn(params):
    logits = nnx.merge(graphdef, params)(INPUTS, dec)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), TARGETS[..., None], -1))

  grads = jax.jit(jax.grad(loss_fn))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0, path


def test_dropout_key_is_supplied_per_call_inside_a_pure_jitted_step(model):
  graphdef, params = nnx.split(model)
  assert not jax.tree.leaves(nnx.state(model, nnx.RngState))  # parameters only

  @jax.jit
  def train_forward(params, key, step):
    m = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=jax.random.fold_in(key, step))
    return m(INPUTS, model_lib.shift_right(TARGETS, BOS), deterministic=False, rngs=rngs)

  key = jax.random.key(0)
  a, b = train_forward(params, key, 0), train_forward(params, key, 0)
  c = train_forward(params, key, 1)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  clean = forward(model, INPUTS, model_lib.shift_right(TARGETS, BOS))
  assert not np.allclose(a, clean)
  # deterministic=True ignores any key.
  dec = model_lib.shift_right(TARGETS, BOS)
  np.testing.assert_array_equal(forward(model, INPUTS, dec, deterministic=True, rngs=key),
                                clean)
  with pytest.raises(ValueError, match="dropout key"):
    forward(model, INPUTS, dec, deterministic=False)


def test_attention_dropout_needs_and_uses_the_key():
  cfg = model_lib.TransformerConfig.tiny(dropout_rate=0.0, attention_dropout_rate=0.5, **SMALL)
  model = model_lib.EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  dec = model_lib.shift_right(TARGETS, BOS)
  a = forward(model, INPUTS, dec, deterministic=False, rngs=jax.random.key(0))
  b = forward(model, INPUTS, dec, deterministic=False, rngs=jax.random.key(1))
  assert not np.allclose(a, b)
  deterministic = forward(model, INPUTS, dec, rngs=jax.random.key(0))
  assert not np.allclose(a, deterministic)


def test_attention_weights_are_a_separate_call(model):
  dec = model_lib.shift_right(TARGETS, BOS)
  weights = model.attention_weights(INPUTS, dec)
  assert weights["encoder_self"].shape == (1, 2, 4, 7, 7)
  assert weights["decoder_self"].shape == (1, 2, 4, 5, 5)
  assert weights["cross"].shape == (1, 2, 4, 5, 7)
  np.testing.assert_allclose(weights["cross"].sum(-1), 1.0, rtol=1e-5)
  # Causal: nothing above the diagonal; padded source positions get no weight.
  assert np.all(np.triu(np.asarray(weights["decoder_self"][:, 0]), k=1) == 0)
  assert np.all(np.asarray(weights["cross"][:, 1, :, :, 3:]) == 0)
  # The look-inside leaves no state behind, and the default call records nothing.
  assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))
  forward(model, INPUTS, dec)
  assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))


def test_reference_and_xla_attention_give_the_same_model():
  dec = model_lib.shift_right(TARGETS, BOS)
  outs = [
      forward(model_lib.EncoderDecoder(
          model_lib.TransformerConfig.tiny(attention_impl=impl, **SMALL), rngs=nnx.Rngs(0)),
          INPUTS, dec)
      for impl in ("xla", "reference")
  ]
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_cudnn_model_on_cpu_fails_clearly():
  if jax.default_backend() == "gpu":
    pytest.skip("runs on a GPU backend")
  cfg = model_lib.TransformerConfig.tiny(attention_impl="cudnn", dtype="bfloat16", **SMALL)
  model = model_lib.EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs a GPU"):
    forward(model, INPUTS, model_lib.shift_right(TARGETS, BOS))


def test_parameters_carry_logical_axis_names(model):
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  names = {tuple(v.get_value()) for v in jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, nnx.Variable))}
  assert names == {("vocab", "embed"), ("embed",), ("embed", "heads", "kv"), ("heads", "kv"),
                   ("heads", "kv", "embed"), ("embed", "mlp"), ("mlp",), ("mlp", "embed")}
