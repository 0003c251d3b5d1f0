"""`Translator`: a trained translation run as a Python object, loaded once, compiled per shape.

  translator = transformer.Translator.from_workdir("runs/multi30k", average_last_k=5)
  translator.translate(["Ein Mann fährt Fahrrad."])                      # beam search
  translator.translate(sources, beam_size=8, n_best=3, return_scores=True)
  translator.greedy(sources)
  translator.sample(sources, temperature=0.7, top_p=0.9, seed=1)
  maps = translator.attention_weights("Ein Mann.", "A man.")

Sentences are encoded, sorted by length, decoded in batches whose source width is padded to a
multiple of 16, and returned in input order. Each (decoding settings, source width) pair is
compiled once and the program is reused by every later call with those settings; batches
always have `batch_size` rows (rounded up to the device count), so few shapes exist. Empty or
whitespace-only lines are not decoded: their translation is the empty string. Decoding runs in
one process, on every local device (a data-parallel mesh).
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from transformer import decoding
from transformer import sharding
from transformer.training import errors
from transformer.training import inference

# Source batches are padded to a multiple of this width, so few shapes are compiled.
LENGTH_MULTIPLE = 16


def _beam_fn(state, inputs, segmentation, *, graphdef, beam_size, alpha, max_decode_len,
             early_stopping):
  """(sequences int32 (B, K, L), scores float32 (B, K)) of beam search, best first."""
  model = nnx.merge(graphdef, state.params, state.model_state)
  cfg = model.config
  cache = model.init_cache(inputs, max_decode_len, inputs_segmentation=segmentation)
  return decoding.beam_search(
      model.decode_step, cache, batch_size=inputs.shape[0], beam_size=beam_size,
      max_decode_len=max_decode_len, bos_id=cfg.bos_id, eos_id=cfg.eos_id, alpha=alpha,
      pad_id=cfg.pad_id, early_stopping=early_stopping)


def _greedy_fn(state, inputs, segmentation, *, graphdef, max_decode_len):
  """int32 (B, L): the most likely token at every step."""
  model = nnx.merge(graphdef, state.params, state.model_state)
  return decoding.greedy_translate(model, inputs, max_decode_len=max_decode_len,
                                   inputs_segmentation=segmentation)


def _sample_fn(state, inputs, segmentation, rng, *, graphdef, max_decode_len, temperature,
               top_k, top_p):
  """int32 (B, L): tokens drawn from the (filtered, tempered) next-token distribution."""
  model = nnx.merge(graphdef, state.params, state.model_state)
  cfg = model.config
  cache = model.init_cache(inputs, max_decode_len, inputs_segmentation=segmentation)
  return decoding.sample_tokens(
      model.decode_step, cache, rng, batch_size=inputs.shape[0], max_decode_len=max_decode_len,
      bos_id=cfg.bos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id, temperature=temperature,
      top_k=top_k, top_p=top_p)


@dataclasses.dataclass
class Batch:
  """A padded batch of sentences."""

  rows: list[int]  # Indices of the sentences in this batch.
  inputs: np.ndarray  # int32 (B, S), pad_id padded.
  segmentation: np.ndarray  # int32 (B, S), 0 on padding.


class Translator:
  """A trained translation model with its tokenizer and decoding defaults."""

  def __init__(self, loaded: inference.LoadedRun, *, batch_size: int = 32):
    """Args:
      loaded: from `transformer.training.inference.load_run` (a task that decodes).
      batch_size: sentences per batch (rounded up to a multiple of the device count).
    """
    if not loaded.run.task.decodes:
      raise errors.TrainingError(
          f"{loaded.workdir} trained task {loaded.run.task.name!r}, which does not translate")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.loaded = loaded
    self.mesh = loaded.setup.mesh
    self.batch_size = -(-batch_size // self.mesh.size) * self.mesh.size
    self._compiled = {}  # Settings and source width -> jitted function.
    self.num_compilations = 0  # Traces of the decoding programs (each compiles once).

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None, average_last_k: int = 1,
                   batch_size: int = 32) -> "Translator":
    """Loads a run written by train.py (or `python -m transformer.average`) once.

    Args:
      workdir: the run directory.
      step: a checkpoint step; None = the latest.
      average_last_k: average the parameters of the last k checkpoints (with step=None).
      batch_size: sentences per batch.

    Raises:
      errors.UsageError, errors.TrainingError: as `inference.load_run`.
    """
    loaded = inference.load_run(workdir, step=step, average_last_k=average_last_k)
    return cls(loaded, batch_size=batch_size)

  @property
  def tokenizer(self):
    return self.loaded.tokenizer

  @property
  def decoding_config(self):
    """The run's `config.decoding` (the defaults of `translate`)."""
    return self.loaded.config.decoding

  @property
  def steps(self) -> list[int]:
    """The checkpoint steps the parameters come from."""
    return self.loaded.steps

  def _program(self, key: tuple, fn, **static):
    """The jitted `fn` for `key`, created once (jit then caches one program per shape)."""
    if key not in self._compiled:

      def counted(*args):
        self.num_compilations += 1
        return fn(*args, graphdef=self.loaded.setup.graphdef, **static)

      data = sharding.batch_sharding(self.mesh)
      shardings = (self.loaded.setup.inference_shardings, data, data)
      if fn is _sample_fn:
        shardings += (sharding.replicated(self.mesh),)
      self._compiled[key] = jax.jit(counted, in_shardings=shardings,
                                    out_shardings=sharding.replicated(self.mesh))
    return self._compiled[key]

  def batches(self, sentences: Sequence[str]) -> list[Batch]:
    """Non-empty sentences, encoded (+ EOS, truncated to the model), sorted by length, batched:
    the batches every decoding method of this object runs (also for tools that time their own
    decoding function on them, such as bench/decode.py)."""
    if isinstance(sentences, str):
      raise TypeError("translate a list of sentences, not a string (wrap it in a list)")
    tokenizer, max_len = self.tokenizer, self.loaded.setup.model_config.max_len
    encoded = {}
    for number, sentence in enumerate(sentences):
      if not isinstance(sentence, str):
        raise TypeError(f"sentence {number} is a {type(sentence).__name__}, not a str")
      if not sentence.strip():
        continue
      ids = tokenizer.encode(sentence)
      if len(ids) + 1 > max_len:
        logging.warning("Sentence %d has %d tokens; truncated to the model's %d positions.",
                        number, len(ids) + 1, max_len)
        ids = ids[:max_len - 1]
      encoded[number] = ids + [tokenizer.eos_id]
    order = sorted(encoded, key=lambda i: len(encoded[i]))
    batches = []
    for start in range(0, len(order), self.batch_size):
      rows = order[start:start + self.batch_size]
      width = min(-(-len(encoded[rows[-1]]) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE, max_len)
      inputs = np.full((self.batch_size, width), tokenizer.pad_id, np.int32)
      for row, number in enumerate(rows):
        inputs[row, :len(encoded[number])] = encoded[number]
      batches.append(Batch(rows, inputs, (inputs != tokenizer.pad_id).astype(np.int32)))
    return batches

  def decode_len(self, width: int, max_decode_len: int | None) -> int:
    """L: the given limit or the source width + decoding.max_extra_length (model-capped)."""
    if max_decode_len is not None and max_decode_len < 1:
      raise ValueError(f"max_decode_len must be >= 1, got {max_decode_len}")
    limit = width + self.decoding_config.max_extra_length if max_decode_len is None else (
        max_decode_len)
    return min(limit, self.loaded.setup.model_config.max_len)

  def _run(self, batches: list[Batch], call) -> list[tuple[list[int], np.ndarray]]:
    """Runs `call(batch) -> host arrays` on every batch: [(rows, outputs)]."""
    results = []
    for batch in batches:
      arrays = sharding.make_global_batch(
          {"inputs": batch.inputs, "segmentation": batch.segmentation}, self.mesh)
      outputs = call(batch, arrays["inputs"], arrays["segmentation"])
      results.append((batch.rows, jax.tree.map(np.asarray, jax.device_get(outputs))))
    return results

  def translate(self, sentences: Sequence[str], *, beam_size: int | None = None,
                length_penalty: float | None = None, n_best: int = 1,
                return_scores: bool = False, max_decode_len: int | None = None,
                early_stopping: str | None = None) -> list:
    """Beam-search translations (Vaswani et al., 2017, section 6.1).

    Args:
      sentences: source sentences.
      beam_size: beams K; default the run's decoding.beam_size.
      length_penalty: alpha; default the run's decoding.length_penalty.
      n_best: hypotheses per sentence, best first (<= beam_size).
      return_scores: also return each hypothesis' score, log P(Y) / lp(|Y|).
      max_decode_len: most target tokens; default source width + decoding.max_extra_length.
      early_stopping: "exact" or "heuristic" (`decoding.beam_search`); default the run's
        decoding.early_stopping.

    Returns:
      Per sentence: its translation (n_best=1), or a list of n_best translations; with
      return_scores, (translation, score) pairs instead of strings. Empty sentences give ""
      (score 0.0).
    """
    decoding_cfg = self.decoding_config
    beam_size = decoding_cfg.beam_size if beam_size is None else beam_size
    alpha = decoding_cfg.length_penalty if length_penalty is None else length_penalty
    stopping = decoding_cfg.early_stopping if early_stopping is None else early_stopping
    if stopping not in decoding.EARLY_STOPPING:
      raise ValueError(f"early_stopping must be one of {decoding.EARLY_STOPPING}, got "
                       f"{stopping!r}")
    if beam_size < 1:
      raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
      raise ValueError(f"n_best={n_best} must be between 1 and beam_size={beam_size}")
    if alpha < 0:
      raise ValueError(f"length_penalty must be >= 0, got {alpha}")

    def call(batch, inputs, segmentation):
      length = self.decode_len(batch.inputs.shape[1], max_decode_len)
      program = self._program(("beam", beam_size, float(alpha), length, stopping), _beam_fn,
                              beam_size=beam_size, alpha=float(alpha), max_decode_len=length,
                              early_stopping=stopping)
      return program(self.loaded.state, inputs, segmentation)

    hypotheses = [[("", 0.0)] * n_best for _ in sentences]
    for rows, (sequences, scores) in self._run(self.batches(sentences), call):
      for row, number in enumerate(rows):
        hypotheses[number] = [(self.tokenizer.decode(sequences[row, k].tolist()),
                               float(scores[row, k])) for k in range(n_best)]
    if not return_scores:
      hypotheses = [[text for text, _ in h] for h in hypotheses]
    return [h[0] for h in hypotheses] if n_best == 1 else hypotheses

  def greedy(self, sentences: Sequence[str], *, max_decode_len: int | None = None) -> list[str]:
    """Greedy translations (the most likely token at every step), one per sentence."""
    def call(batch, inputs, segmentation):
      length = self.decode_len(batch.inputs.shape[1], max_decode_len)
      program = self._program(("greedy", length), _greedy_fn, max_decode_len=length)
      return program(self.loaded.state, inputs, segmentation)

    return self._texts(sentences, call)

  def sample(self, sentences: Sequence[str], *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             max_decode_len: int | None = None) -> list[str]:
    """Sampled translations, one per sentence (the same seed gives the same samples).

    Args:
      sentences: source sentences.
      temperature: softmax temperature (> 0; 0 is greedy).
      top_k: sample among the k most likely tokens.
      top_p: sample from the smallest set of tokens whose probability reaches p (1.0: all).
      seed: of the sampling; batch i uses fold_in(key(seed), i).
      max_decode_len: as in `translate`.
    """
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    key = jax.random.PRNGKey(seed)
    counter = iter(range(1 << 30))

    def call(batch, inputs, segmentation):
      length = self.decode_len(batch.inputs.shape[1], max_decode_len)
      settings = dict(max_decode_len=length, temperature=float(temperature), top_k=top_k,
                      top_p=top_p)
      program = self._program(("sample",) + tuple(settings.values()), _sample_fn, **settings)
      return program(self.loaded.state, inputs, segmentation,
                     jax.random.fold_in(key, next(counter)))

    return self._texts(sentences, call)

  def _texts(self, sentences: Sequence[str], call) -> list[str]:
    texts = ["" for _ in sentences]
    for rows, ids in self._run(self.batches(sentences), call):
      for row, number in enumerate(rows):
        texts[number] = self.tokenizer.decode(ids[row].tolist())
    return texts

  def attention_weights(self, source: str, target: str) -> dict:
    """Every layer's and head's attention weights of one sentence pair, for plots.

    Returns:
      {"source_tokens": [str] (S, EOS included), "target_tokens": [str] (T: BOS, then the
      target without EOS), "encoder_self": (L_enc, N, S, S), "decoder_self": (L_dec, N, T, T),
      "cross": (L_dec, N, T, S)} as float32 numpy arrays; rows sum to 1.
    """
    tokenizer, cfg = self.tokenizer, self.loaded.setup.model_config
    source_ids = tokenizer.encode(source)[:cfg.max_len - 1] + [tokenizer.eos_id]
    target_ids = [cfg.bos_id] + tokenizer.encode_target_batch([target])[0][:cfg.max_len - 1]
    model = nnx.merge(self.loaded.setup.graphdef,
                      *jax.device_get((self.loaded.state.params, self.loaded.state.model_state)))
    maps = model.attention_weights(jnp.asarray([source_ids], jnp.int32),
                                   jnp.asarray([target_ids], jnp.int32))
    out = {name: np.asarray(value)[:, 0] for name, value in maps.items()}
    out["source_tokens"] = [_piece(tokenizer, i) for i in source_ids]
    out["target_tokens"] = [_piece(tokenizer, i) for i in target_ids]
    return out


def _piece(tokenizer, token_id: int) -> str:
  """A label for `token_id`: its SentencePiece piece, else the text it decodes to."""
  specials = {tokenizer.pad_id: "<pad>", tokenizer.bos_id: "<s>", tokenizer.eos_id: "</s>"}
  if token_id in specials:
    return specials[token_id]
  if hasattr(tokenizer, "id_to_piece"):
    return tokenizer.id_to_piece(token_id)
  return tokenizer.decode([token_id])
