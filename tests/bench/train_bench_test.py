"""The benchmarks' FLOP counter (by hand and against the model's own matmuls) and the
accelerator benchmark's smoke mode, which runs every line of bench/mfu.py on the CPU."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from transformer import model as model_lib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench"))

import mfu  # pylint: disable=g-import-not-at-top,wrong-import-position

# D=16, N=2 (H=8), F=32, V=64, one layer per stack; batch B=2, source S=3, target T=5.
_CONFIG = model_lib.TransformerConfig.tiny(
    vocab_size=64, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1, num_decoder_layers=1)
_B, _S, _T = 2, 3, 5


def _matmul_flops(m, k, n, count=1):
  return 2 * m * k * n * count


def test_forward_flops_by_hand():
  d, f, v, h, n = 16, 32, 64, 8, 2
  bs, bt = _B * _S, _B * _T
  encoder = (_matmul_flops(bs, d, d, 4)  # Q, K, V, output projections
             + _matmul_flops(_S, h, _S, _B * n)  # scores, per (batch, head)
             + _matmul_flops(_S, _S, h, _B * n)  # weights @ values
             + _matmul_flops(bs, d, f) + _matmul_flops(bs, f, d))  # feed-forward
  decoder_self = (_matmul_flops(bt, d, d, 4) + _matmul_flops(_T, h, _T, _B * n)
                  + _matmul_flops(_T, _T, h, _B * n))
  cross = (_matmul_flops(bt, d, d, 2)  # Q and output projections of the decoder side
           + _matmul_flops(bs, d, d, 2)  # K and V of the encoder output
           + _matmul_flops(_T, h, _S, _B * n) + _matmul_flops(_T, _S, h, _B * n))
  decoder = decoder_self + cross + _matmul_flops(bt, d, f) + _matmul_flops(bt, f, d)
  logits = _matmul_flops(bt, d, v)
  expected = encoder + decoder + logits
  assert expected == 108_672  # Written out once, so a change to either side shows.
  assert model_lib.encoder_decoder_forward_flops(_CONFIG, _B, _S, _T) == expected
  assert model_lib.encoder_decoder_train_flops(_CONFIG, _B, _S, _T) == 3 * expected


def _dot_flops(jaxpr) -> int:
  """2 x (output size) x (contracted size), summed over every dot_general, sub-jaxprs too."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      contracted = 1
      for axis in lhs_contract:
        contracted *= lhs[axis]
      out_size = 1
      for size in eqn.outvars[0].aval.shape:
        out_size *= size
      total += 2 * out_size * contracted
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += _dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += _dot_flops(sub)
  return total


def test_forward_flops_equal_the_models_matmuls():
  # Abstract parameters: tracing needs shapes only, so nothing is initialized or compiled.
  graphdef, params = nnx.split(
      nnx.eval_shape(lambda: model_lib.EncoderDecoder(_CONFIG, rngs=nnx.Rngs(params=0))))
  inputs = jnp.full((_B, _S), 5, jnp.int32)
  decoder_inputs = jnp.full((_B, _T), 6, jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p, a, b: nnx.merge(graphdef, p)(a, b))(
      params, inputs, decoder_inputs)
  assert _dot_flops(jaxpr.jaxpr) == model_lib.encoder_decoder_forward_flops(_CONFIG, _B, _S, _T)


def test_flop_counter_rejects_empty_shapes():
  with pytest.raises(ValueError, match="target_length"):
    model_lib.encoder_decoder_forward_flops(_CONFIG, 2, 3, 0)


def test_accelerator_benchmark_smoke_mode_runs_every_path():
  # Asking for cuDNN attention off a GPU exercises the fallback to the portable kernel too.
  lines = mfu.run(["smoke"], steps=2, warmup=1, matmul_size=64, attention_impl="cudnn",
                  batch_size=None, pipeline_dataset="synthetic/copy", manual_dir=None,
                  pipeline_steps=2)
  text = "\n".join(lines)
  assert lines[-1].startswith("MFU (model FLOPs / step time / measured bf16 matmul rate): smoke ")
  assert "note: cudnn failed" in text and "needs a GPU" in text, text
  assert "input pipeline (smoke, 2 steps): pre-placed batch" in text, text
  assert "traces 1, compilations 0" in text, text
  assert "not measured" not in text, text
  row = next(line for line in lines if line.startswith("smoke ")).split()
  # Attention path actually used, trace count, XLA compilations during the timed steps.
  assert (row[1], row[-3], row[-2]) == ("xla", "1", "0"), row
