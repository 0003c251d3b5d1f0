"""Parity with an independent implementation: EncoderDecoder (post-LN, ReLU) against
torch.nn.Transformer plus embeddings and the tied projection, given identical weights.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import model as model_lib

torch = pytest.importorskip("torch")

D, N, F, V = 32, 4, 64, 64


def _t(x):
  return torch.tensor(np.asarray(x, dtype=np.float32))


def _copy_attention(ours, theirs):
  # torch packs Q, K, V as rows of in_proj_weight (3D, D) and computes x @ W^T + b, with
  # head n owning features n*H .. n*H + H - 1; ours are (D, N, H) kernels with the same order.
  kernels = [np.asarray(getattr(ours, f"{n}_kernel")[...]).reshape(D, D).T
             for n in ("query", "key", "value")]
  biases = [np.asarray(getattr(ours, f"{n}_bias")[...]).reshape(D)
            for n in ("query", "key", "value")]
  theirs.in_proj_weight.copy_(_t(np.concatenate(kernels, 0)))
  theirs.in_proj_bias.copy_(_t(np.concatenate(biases, 0)))
  theirs.out_proj.weight.copy_(_t(np.asarray(ours.out_kernel[...]).reshape(D, D).T))
  theirs.out_proj.bias.copy_(_t(ours.out_bias[...]))


def _copy_norm(ours, theirs):
  theirs.weight.copy_(_t(ours.norm.scale[...]))
  theirs.bias.copy_(_t(ours.norm.bias[...]))


def _copy_ffn(ours, theirs_layer):
  theirs_layer.linear1.weight.copy_(_t(np.asarray(ours.w1[...]).T))
  theirs_layer.linear1.bias.copy_(_t(ours.b1[...]))
  theirs_layer.linear2.weight.copy_(_t(np.asarray(ours.w2[...]).T))
  theirs_layer.linear2.bias.copy_(_t(ours.b2[...]))


def _randomize_norms(model):
  # Non-trivial norm parameters, so a swapped or missing norm cannot go unnoticed.
  key = jax.random.key(7)
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.Param) and path[-1] in ("scale", "bias") and "norm" in path:
      key, sub = jax.random.split(key)
      base = 1.0 if path[-1] == "scale" else 0.0
      var[...] = base + 0.3 * jax.random.normal(sub, var.shape)


def _torch_positions(length):
  pe = torch.zeros(length, D, dtype=torch.float64)
  pos = torch.arange(length, dtype=torch.float64)[:, None]
  div = torch.exp(torch.arange(0, D, 2, dtype=torch.float64) * (-math.log(10000.0) / D))
  pe[:, 0::2] = torch.sin(pos * div)
  pe[:, 1::2] = torch.cos(pos * div)
  return pe.float()


def test_encoder_decoder_matches_torch_transformer():
  cfg = model_lib.TransformerConfig.tiny(vocab_size=V, d_model=D, num_heads=N, d_ff=F,
                                         layer_norm_epsilon=1e-5)
  ours = model_lib.EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  _randomize_norms(ours)
  enc_layer = torch.nn.TransformerEncoderLayer(D, N, F, dropout=0.0, activation="relu",
                                               layer_norm_eps=1e-5, batch_first=True)
  dec_layer = torch.nn.TransformerDecoderLayer(D, N, F, dropout=0.0, activation="relu",
                                               layer_norm_eps=1e-5, batch_first=True)
  # Custom stacks without torch's extra final LayerNorm, which the paper's post-LN lacks.
  theirs = torch.nn.Transformer(
      D, N, custom_encoder=torch.nn.TransformerEncoder(enc_layer, 2, enable_nested_tensor=False),
      custom_decoder=torch.nn.TransformerDecoder(dec_layer, 2), batch_first=True).eval()
  with torch.no_grad():
    for o, t in zip(ours.encoder.layers, theirs.encoder.layers, strict=True):
      _copy_attention(o.self_attention, t.self_attn)
      _copy_norm(o.self_residual, t.norm1)
      _copy_ffn(o.feed_forward, t)
      _copy_norm(o.ff_residual, t.norm2)
    for o, t in zip(ours.decoder.layers, theirs.decoder.layers, strict=True):
      _copy_attention(o.self_attention, t.self_attn)
      _copy_norm(o.self_residual, t.norm1)
      _copy_attention(o.cross_attention, t.multihead_attn)
      _copy_norm(o.cross_residual, t.norm2)
      _copy_ffn(o.feed_forward, t)
      _copy_norm(o.ff_residual, t.norm3)

  inputs = np.array([[5, 6, 7, 8, 9, 3, 0, 0], [10, 11, 12, 3, 0, 0, 0, 0]])
  targets = np.array([[13, 14, 15, 16, 3, 0], [17, 18, 3, 0, 0, 0]])
  dec = np.asarray(model_lib.shift_right(jnp.asarray(targets), cfg.bos_id))
  got = np.asarray(ours(jnp.asarray(inputs), jnp.asarray(dec)))

  table = _t(ours.encoder_embedding.embedding.table[...])  # shared and tied

  def embed(ids):
    return table[torch.tensor(ids)] * math.sqrt(D) + _torch_positions(ids.shape[1])

  with torch.no_grad():
    hidden = theirs(
        embed(inputs), embed(dec),
        tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(dec.shape[1]),
        src_key_padding_mask=torch.tensor(inputs == 0),
        memory_key_padding_mask=torch.tensor(inputs == 0),
        tgt_is_causal=True)
    expected = (hidden @ table.T).numpy()
  valid = dec != 0  # padded decoder positions are not outputs of either model
  np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
