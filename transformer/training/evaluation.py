"""Validation and test evaluation: loss / accuracy / perplexity over a split, and BLEU of
beam-search translations (Vaswani et al., 2017, section 6.1: beam 4, alpha 0.6, limit input+50).
"""

import dataclasses
import functools
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from transformer import data as data_lib
from transformer import decoding
from transformer import distributed
from transformer import metrics as metrics_lib
from transformer import sharding
from transformer import storage
from transformer.training import builder
from transformer.training import state as state_lib


def evaluate_loss(
    setup: builder.ModelSetup, state, dataset: data_lib.EvalDataset, *, prefix: str = "eval"
) -> dict[str, float]:
  """Mean loss, token accuracy and perplexity over every batch of `dataset`.

  Returns:
    {"eval/loss", "eval/accuracy", "eval/perplexity", "eval/tokens"} (`prefix` for "eval").
  """
  total = None
  for batch in dataset.batches:
    metrics = setup.eval_step(state, sharding.make_global_batch(batch, setup.mesh))
    total = metrics_lib.accumulate(total, distributed.wait_on_cpu(metrics))
  return metrics_lib.summarize(total, prefix)


def evaluate_split(
    setup: builder.ModelSetup,
    state,
    dataset: data_lib.EvalDataset,
    *,
    prefix: str,
    translator: "BatchTranslator | None" = None,
    tokenizer: data_lib.Tokenizer | None = None,
    num_examples: int = 0,
    output_path: str | None = None,
) -> tuple[dict[str, float], list[str]]:
  """Loss, accuracy and perplexity of a split and, given a translator, BLEU of its translations.

  Args:
    setup: the model setup.
    state: a TrainState or InferenceState.
    dataset: the split.
    prefix: of every metric name ("eval", "test", or a split name).
    translator: decodes for BLEU (None: no BLEU).
    tokenizer: detokenizes the translations (with a translator).
    num_examples: leading examples translated for BLEU; 0 = all.
    output_path: where the translations are written (process 0), if given.

  Returns:
    ({prefix/loss, prefix/accuracy, prefix/perplexity, prefix/tokens} plus, with a translator,
    prefix/bleu, prefix/bleu_lowercase and prefix/bleu_seconds; the detokenized translations of
    the leading examples in example order, [] without a translator).
  """
  results = evaluate_loss(setup, state, dataset, prefix=prefix)
  hypotheses = []
  if translator is not None:
    start = time.perf_counter()
    scores, hypotheses = evaluate_bleu(translator, state, dataset, tokenizer,
                                       num_examples=num_examples, output_path=output_path)
    results.update({f"{prefix}/{name}": value for name, value in scores.items()})
    results[f"{prefix}/bleu_seconds"] = time.perf_counter() - start
  return results, hypotheses


def translation_samples(dataset: data_lib.EvalDataset, hypotheses: list[str],
                        count: int) -> list[tuple[str, str, str]]:
  """(source, reference, hypothesis) of the first `count` examples that have a translation."""
  count = min(count, len(hypotheses))
  return list(zip(dataset.sources[:count], dataset.references[:count], hypotheses[:count]))


def predict_step(
    state: state_lib.InferenceState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    beam_size: int,
    alpha: float,
    max_decode_len: int,
    early_stopping: str = "exact",
) -> jax.Array:
  """Beam-search translations of a batch: the encoder runs once, then K beams per sentence.

  Args:
    state: the parameters.
    batch: with `inputs` (B, S) and `inputs_segmentation` (B, S).
    graphdef: the EncoderDecoder graph (static).
    beam_size, alpha, max_decode_len, early_stopping: beam search settings (static).

  Returns:
    int32 (B, L) best hypothesis ids without BOS, padding after EOS.
  """
  model = nnx.merge(graphdef, state.params, state.model_state)
  best, _ = decoding.beam_search_translate(
      model, batch["inputs"], beam_size=beam_size, alpha=alpha, max_decode_len=max_decode_len,
      inputs_segmentation=batch["inputs_segmentation"], early_stopping=early_stopping,
  )
  return best


@dataclasses.dataclass(frozen=True)
class BatchTranslator:
  """A jitted beam-search function bound to a model graph and a mesh, decoding the batches of
  an EvalDataset in every process (BLEU during training and `evaluate`). Users translate text
  with `transformer.Translator`."""

  setup: builder.ModelSetup
  predict_jit: callable  # (InferenceState, batch) -> (B, L) ids.

  @classmethod
  def create(
      cls, setup: builder.ModelSetup, *, beam_size: int, alpha: float, max_decode_len: int,
      early_stopping: str = "exact",
  ) -> "BatchTranslator":
    if not setup.task.decodes:
      raise ValueError(f"translation needs task 'translation', got {setup.task.name!r}")
    max_decode_len = min(max_decode_len, setup.model_config.max_len)
    predict = jax.jit(
        functools.partial(
            predict_step, graphdef=setup.graphdef, beam_size=beam_size, alpha=alpha,
            max_decode_len=max_decode_len, early_stopping=early_stopping,
        ),
        in_shardings=(setup.inference_shardings, sharding.batch_sharding(setup.mesh)),
        out_shardings=sharding.replicated(setup.mesh),
    )
    return cls(setup=setup, predict_jit=predict)

  def predict(self, state, batch) -> jax.Array:
    """(B, L) replicated best-hypothesis ids of a global batch (`predict_step`)."""
    return self.predict_jit(state_lib.inference_view(state), batch)

  def translate_batches(
      self,
      state,
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
      state: a TrainState or InferenceState.
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
    translator: BatchTranslator,
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
    storage.write_atomic(output_path, "".join(h.replace("\n", " ") + "\n" for h in hypotheses))
  return scores, hypotheses


def evaluate_test(run, checkpointer, state, step: int, *, split: str, average_last_k: int,
                  translator: BatchTranslator | None) -> tuple[dict[str, float], dict]:
  """The final evaluation of a run: `split` with the last k checkpoints' parameters averaged.

  Args:
    run: the `runs.RunSetup` (training).
    checkpointer: the run's Checkpointer.
    state: the final TrainState (used as is when fewer than 2 checkpoints are averaged).
    step: the final step.
    split: the test split.
    average_last_k: checkpoints to average (fewer when fewer exist, with a warning).
    translator: for BLEU, or None.

  Returns:
    (metrics "test/...", {"test_averaged_steps": steps, "test_hypotheses": path (BLEU only)}).
  """
  k = min(average_last_k, len(checkpointer.all_steps()))
  if k < average_last_k:
    logging.warning("average_last_k=%d but only %d checkpoints exist; averaging %d.",
                    average_last_k, k, k)
  averaged = [step]
  if k > 1:
    state, averaged = checkpointer.average_last_k(k, run.setup.abstract_state_with_shardings())
  path = os.path.join(run.workdir, "hypotheses", f"{split}_step{step}.txt")
  results, _ = evaluate_split(run.setup, state, run.eval_dataset(split), prefix="test",
                              translator=translator, tokenizer=run.tokenizer, output_path=path)
  out = {"test_averaged_steps": averaged}
  if translator is not None:
    out["test_hypotheses"] = path
  return results, out
