"""The benchmarks' FLOP counter (by hand and against the model's own matmuls) and the
accelerator benchmark's smoke mode, which runs every line of bench/mfu.py on the CPU."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from transformer import model as model_lib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench"))

import flops  # pylint: disable=g-import-not-at-top,wrong-import-position
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
  assert flops.encoder_decoder_forward_flops(_CONFIG, _B, _S, _T) == expected
  assert flops.encoder_decoder_train_flops(_CONFIG, _B, _S, _T) == 3 * expected


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
  assert _dot_flops(jaxpr.jaxpr) == flops.encoder_decoder_forward_flops(_CONFIG, _B, _S, _T)


def test_flop_counter_rejects_empty_shapes():
  with pytest.raises(ValueError, match="target_length"):
    flops.encoder_decoder_forward_flops(_CONFIG, 2, 3, 0)


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


import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax_runner  # pylint: disable=g-import-not-at-top,wrong-import-position

_BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench")


def test_run_worker_marks_a_measurement_started_under_load():
  argv = [sys.executable, "-c", "print('noise'); print('RESULT {\"step_s\": 0.5}')"]
  quiet = common.run_worker(argv, label="quiet", max_load=1e6, wait_s=0)
  assert quiet["step_s"] == 0.5 and not quiet["loaded"]
  loaded = common.run_worker(argv, label="loaded", max_load=-1.0, wait_s=0)
  assert loaded["loaded"] and loaded["load_before"] >= 0.0


def test_run_worker_reports_a_failing_worker():
  argv = [sys.executable, "-c", "import sys; sys.exit('worker broke')"]
  with pytest.raises(RuntimeError, match="worker broke"):
    common.run_worker(argv, label="broken", max_load=1e6, wait_s=0)


def _row(impl, step_s, loaded=False, config="small"):
  return dict(impl=impl, step_s=step_s, loaded=loaded, config=config)


def test_ratio_line_uses_unloaded_rows_and_the_best_peer():
  rows = [_row("ours", 1.0), _row("ours", 3.0, loaded=True), _row("torch2", 2.0),
          _row("flax_wmt", 1.5), _row("flax_wmt", 0.1, loaded=True)]
  line = common.ratio_line(rows, ["small"])
  assert "2.00x torch2" in line and "1.50x flax_wmt" in line, line
  assert "1.50x the best peer" in line, line
  assert "no unloaded measurement of ours" in common.ratio_line(
      [_row("ours", 1.0, loaded=True)], ["small"])


def test_cpu_benchmark_times_each_implementation_in_its_own_process(tmp_path):
  """The CPU path end to end on tiny shapes: matmul rate, ours and torch, MFU, the ratio."""
  out = tmp_path / "rows.json"
  result = subprocess.run(
      [sys.executable, os.path.join(_BENCH_DIR, "train_step.py"), "--device=cpu",
       "--configs=smoke", "--peers=torch", "--steps=15", "--warmup=1", "--max_load=1e6",
       "--load_wait=0", "--matmul_size_cpu=256", f"--json={out}"],
      capture_output=True, text=True, check=False, timeout=600,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join(
          [os.path.dirname(_BENCH_DIR), os.environ.get("PYTHONPATH", "")])))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  by_impl = {r["impl"]: r for r in rows}
  assert set(by_impl) == {"ours", "torch2"}, by_impl
  ours = by_impl["ours"]
  # Our step ran in its own process (its own jax import) and was compiled exactly once.
  assert ours["traces"] == 1 and ours["recompiles"] == 0 and "jax" in ours
  assert "torch" in by_impl["torch2"] and "jax" not in by_impl["torch2"]
  assert all(r["peak_rss_mib"] > 0 and 0 < r["matmul_fraction"] for r in rows)
  shape = common.CONFIGS["smoke"]
  assert ours["flops"] == flops.encoder_decoder_train_flops(
      jax_runner.model_config(shape), shape["batch"], shape["src"], shape["tgt"])
  assert "ratio (tokens/s of ours / of the other): smoke: ours" in result.stdout
  assert "x torch2; " in result.stdout and "the best peer" in result.stdout


def test_cpu_benchmark_in_bfloat16_runs_ours_and_torch_autocast(tmp_path):
  """`--cpu_dtype=bfloat16`: both steps compute in bf16, the float32-only Flax peer is skipped."""
  out = tmp_path / "rows.json"
  result = subprocess.run(
      [sys.executable, os.path.join(_BENCH_DIR, "train_step.py"), "--device=cpu",
       "--configs=smoke", "--peers=torch,flax_wmt", "--cpu_dtype=bfloat16", "--steps=15",
       "--warmup=1", "--max_load=1e6", "--load_wait=0", "--matmul_size_cpu=256",
       f"--json={out}"],
      capture_output=True, text=True, check=False, timeout=600,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join(
          [os.path.dirname(_BENCH_DIR), os.environ.get("PYTHONPATH", "")])))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  assert {r["impl"]: r["compute_dtype"] for r in rows} == {
      "ours": "bfloat16", "torch2": "bfloat16"}, rows
  assert "bfloat16 matmul rate" in result.stdout
  assert "skipped at bfloat16" in result.stdout or "not found" in result.stdout
