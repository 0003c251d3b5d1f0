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
from transformer import distributed
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
    metrics = setup.eval_step(state, sharding.make_global_batch(batch, setup.mesh))
    total = metrics_lib.accumulate(total, distributed.wait_on_cpu(metrics))
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

    Every process gets all num_examples translations (each feeds its rows of each batch; the
    example indices of all rows are gathered), so every process computes the same BLEU. A
    collective: all processes call it with the same number of batches.

    Args:
      state: the train state.
      batches: per-process batches with `inputs` and `inputs_segmentation`.
      indices: per batch, the example index of each row of this process (-1 for padding rows).
      tokenizer: decodes ids to text (stops at EOS).
      num_examples: how many leading examples to translate.

    Returns:
      num_examples strings, in example order.
    """
    hypotheses = [None] * num_examples
    for batch, index in zip(batches, indices):
      # (B,) example index of every row of the global batch, in the order of `predict`'s rows.
      examples = sharding.gather_batch_rows(np.asarray(index, np.int32), self.setup.mesh)
      wanted = examples[examples >= 0]
      if wanted.size == 0 or wanted.min() >= num_examples:
        break  # Batches are in example order: no later batch is needed either.
      global_batch = sharding.make_global_batch(
          {"inputs": batch["inputs"], "inputs_segmentation": batch["inputs_segmentation"]},
          self.setup.mesh,
      )
      ids = np.asarray(jax.device_get(self.predict(state, global_batch)))  # Replicated (B, L).
      for row, example in enumerate(examples):
        if 0 <= example < num_examples:
          hypotheses[example] = tokenizer.decode(ids[row].tolist())
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
) -> tuple[dict[str, float], list[str]]:
  """Corpus BLEU of beam-search translations of the first `num_examples` examples (0 = all).

  Args:
    translator: the jitted beam search.
    state: the train state.
    dataset: an ordered EvalDataset with sources and references.
    tokenizer: detokenizes hypotheses.
    num_examples: number of leading examples; 0 means the whole split.
    output_path: if given, hypotheses are written there, one per line (process 0).

  Returns:
    ({"bleu": cased BLEU, "bleu_lowercase": lowercased BLEU}, both sacreBLEU 13a in [0, 100]
    on detokenized text; hypotheses).
  """
  total = len(dataset.references)
  n = total if num_examples <= 0 else min(num_examples, total)
  hypotheses = translator.translate_batches(state, dataset.batches, dataset.indices, tokenizer, n)
  references = dataset.references[:n]
  scores = {
      "bleu": metrics_lib.compute_bleu(hypotheses, references),
      "bleu_lowercase": metrics_lib.compute_bleu(hypotheses, references, lowercase=True),
  }
  if output_path is not None and jax.process_index() == 0:
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as f:
      f.writelines(h.replace("\n", " ") + "\n" for h in hypotheses)
  return scores, hypotheses
