"""Validation and test evaluation: loss / accuracy / perplexity over a split, and BLEU of
beam-search translations (Vaswani et al., 2017, section 6.1: beam 4, alpha 0.6, limit input+50).
"""

import dataclasses
import functools
import os

import jax
import numpy as np
from flax import nnx

from transformer import data as data_lib
from transformer import decoding
from transformer import metrics as metrics_lib
from transformer import sharding
from transformer.training import builder
from transformer.training import state as state_lib


def evaluate_loss(
    setup: builder.TrainSetup, state: state_lib.TrainState, dataset: data_lib.EvalDataset
) -> dict[str, float]:
  """Mean validation loss, token accuracy and perplexity over every batch of `dataset`.

  Returns:
    {"eval/loss", "eval/accuracy", "eval/perplexity", "eval/tokens"}.
  """
  total = None
  for batch in dataset.batches:
    total = metrics_lib.accumulate(
        total, setup.eval_step(state, sharding.make_global_batch(batch, setup.mesh))
    )
  return metrics_lib.summarize(total, "eval")


def predict_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    beam_size: int,
    alpha: float,
    max_decode_len: int,
) -> jax.Array:
  """Beam-search translations of a batch: the encoder runs once, then K beams per sentence.

  Args:
    state: train state (params and model_state are used).
    batch: with `inputs` (B, S) and `inputs_segmentation` (B, S).
    graphdef: the EncoderDecoder graph (static).
    beam_size, alpha, max_decode_len: beam search settings (static).

  Returns:
    int32 (B, L) best hypothesis ids without BOS, padding after EOS.
  """
  model = nnx.merge(graphdef, state.params, state.model_state)
  best, _ = decoding.beam_search_translate(
      model, batch["inputs"], beam_size=beam_size, alpha=alpha, max_decode_len=max_decode_len,
      inputs_segmentation=batch["inputs_segmentation"],
  )
  return best


@dataclasses.dataclass(frozen=True)
class Translator:
  """A jitted beam-search function bound to a model graph and a mesh."""

  setup: builder.TrainSetup
  predict: callable  # (state, batch) -> (B, L) ids.

  @classmethod
  def create(
      cls, setup: builder.TrainSetup, *, beam_size: int, alpha: float, max_decode_len: int
  ) -> "Translator":
    if setup.task != "translation":
      raise ValueError(f"translation needs task 'translation', got {setup.task!r}")
    max_decode_len = min(max_decode_len, setup.model_config.max_len)
    predict = jax.jit(
        functools.partial(
            predict_step, graphdef=setup.graphdef, beam_size=beam_size, alpha=alpha,
            max_decode_len=max_decode_len,
        ),
        in_shardings=(setup.state_shardings, sharding.batch_sharding(setup.mesh)),
        out_shardings=sharding.replicated(setup.mesh),
    )
    return cls(setup=setup, predict=predict)

  def translate_batches(
      self,
      state: state_lib.TrainState,
      batches: list[dict[str, np.ndarray]],
      indices: list[np.ndarray],
      tokenizer: data_lib.Tokenizer,
      num_examples: int,
  ) -> list[str]:
    """Detokenized translations of examples 0..num_examples-1 of batched, ordered data.

    Args:
      state: the train state.
      batches: per-process batches with `inputs` and `inputs_segmentation`.
      indices: per batch, the example index of each row (-1 for padding rows).
      tokenizer: decodes ids to text (stops at EOS).
      num_examples: how many leading examples to translate.

    Returns:
      num_examples strings, in example order.
    """
    hypotheses = [None] * num_examples
    for batch, index in zip(batches, indices):
      if index.max(initial=-1) < 0 or index[index >= 0].min() >= num_examples:
        break
      global_batch = sharding.make_global_batch(
          {"inputs": batch["inputs"], "inputs_segmentation": batch["inputs_segmentation"]},
          self.setup.mesh,
      )
      ids = np.asarray(jax.device_get(self.predict(state, global_batch)))
      # Replicated output: rows of every process; this process's rows start at its offset.
      local_rows = len(index)
      start = jax.process_index() * local_rows
      for row, example in enumerate(index):
        if 0 <= example < num_examples:
          hypotheses[example] = tokenizer.decode(ids[start + row].tolist())
    missing = [i for i, h in enumerate(hypotheses) if h is None]
    if missing:
      raise RuntimeError(f"{len(missing)} examples were not translated (first: {missing[:5]})")
    return hypotheses


def evaluate_bleu(
    translator: Translator,
    state: state_lib.TrainState,
    dataset: data_lib.EvalDataset,
    tokenizer: data_lib.Tokenizer,
    *,
    num_examples: int = 0,
    output_path: str | None = None,
) -> tuple[float, list[str]]:
  """Corpus BLEU of beam-search translations of the first `num_examples` examples (0 = all).

  Args:
    translator: the jitted beam search.
    state: the train state.
    dataset: an ordered EvalDataset with sources and references.
    tokenizer: detokenizes hypotheses.
    num_examples: number of leading examples; 0 means the whole split.
    output_path: if given, hypotheses are written there, one per line (process 0).

  Returns:
    (BLEU in [0, 100], hypotheses).
  """
  total = len(dataset.references)
  n = total if num_examples <= 0 else min(num_examples, total)
  hypotheses = translator.translate_batches(state, dataset.batches, dataset.indices, tokenizer, n)
  bleu = metrics_lib.compute_bleu(hypotheses, dataset.references[:n])
  if output_path is not None and jax.process_index() == 0:
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as f:
      f.writelines(h.replace("\n", " ") + "\n" for h in hypotheses)
  return bleu, hypotheses
