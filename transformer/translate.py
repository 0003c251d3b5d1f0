r"""Translates sentences with a trained run (beam search, Vaswani et al., 2017, section 6.1).

  echo "Ein Mann fährt Fahrrad." | python -m transformer.translate --workdir=runs/multi30k
  python -m transformer.translate --workdir=runs/multi30k --input=sources.de --average_last_k=5

Reads one source sentence per line (stdin or --input, UTF-8) and prints one translation per
line, in order, using the workdir's tokenizer and its latest checkpoint (or the average of the
last k). Writes nothing to the workdir. Exit status: 0 done; 1 the workdir holds no usable run or
checkpoint; 2 a bad flag or input that is not UTF-8 (nothing is printed).
"""

import sys
from typing import BinaryIO, TextIO

import numpy as np
from absl import app
from absl import flags
from absl import logging

from transformer.training import evaluation
from transformer.training import inference
from transformer.training import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by train.py.", required=True)
_INPUT = flags.DEFINE_string("input", None, "File of source sentences; default stdin.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", None, "Beams; default the run's decoding config.")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", None, "Length-penalty alpha; default the "
                                     "run's decoding config.")
_AVERAGE_LAST_K = flags.DEFINE_integer("average_last_k", 1, "Average the last k checkpoints.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Sentences per beam-search batch.")

# Source batches are padded to a multiple of this length, so few shapes are compiled.
_LENGTH_MULTIPLE = 16


def translate_lines(run: inference.LoadedRun, lines: list[str], *, beam_size: int,
                    length_penalty: float, batch_size: int) -> list[str]:
  """Translations of `lines`, one per line, in order.

  Sources longer than the model's positions are truncated (with a warning).

  Args:
    run: the loaded run (task "translation").
    lines: source sentences.
    beam_size: beams K.
    length_penalty: alpha.
    batch_size: sentences per batch (rounded up to a multiple of the device count).

  Returns:
    The detokenized translations.
  """
  if run.setup.task != "translation":
    raise loop.TrainingError(f"{run.workdir} trained task {run.setup.task!r}, not translation")
  tokenizer, setup = run.tokenizer, run.setup
  max_len = setup.model_config.max_len
  shards = setup.mesh.size
  batch_size = -(-batch_size // shards) * shards
  encoded = []
  for number, line in enumerate(lines, start=1):
    ids = tokenizer.encode(line)
    if len(ids) + 1 > max_len:
      logging.warning("Line %d has %d tokens; truncated to the model's %d positions.", number,
                      len(ids) + 1, max_len)
      ids = ids[:max_len - 1]
    encoded.append(ids + [tokenizer.eos_id])
  translators = {}
  outputs = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start:start + batch_size]
    length = min(-(-max(len(x) for x in chunk) // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE, max_len)
    inputs = np.full((batch_size, length), tokenizer.pad_id, np.int32)
    for row, ids in enumerate(chunk):
      inputs[row, :len(ids)] = ids
    batch = {"inputs": inputs, "inputs_segmentation": (inputs != tokenizer.pad_id).astype(np.int32)}
    if length not in translators:
      translators[length] = evaluation.Translator.create(
          setup, beam_size=beam_size, alpha=length_penalty,
          max_decode_len=length + run.config.decoding.max_extra_length,
      )
    index = np.where(np.arange(batch_size) < len(chunk), np.arange(batch_size), -1)
    outputs += translators[length].translate_batches(run.state, [batch], [index], tokenizer,
                                                     len(chunk))
  return outputs


def decode_lines(data: bytes, name: str) -> list[str]:
  """The lines of UTF-8 `data` (without line ends).

  Raises:
    loop.UsageError: `data` is not UTF-8 (naming the line and the byte).
  """
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise loop.UsageError(f"{name} is not valid UTF-8: line {line} holds the byte "
                          f"0x{data[e.start]:02x} (offset {e.start})") from e
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def run_command(workdir: str, *, input_path: str | None, beam_size: int | None,
                length_penalty: float | None, average_last_k: int, step: int | None,
                batch_size: int, stdin: BinaryIO, stdout: TextIO, stderr: TextIO) -> int:
  """The command: checks the flags, reads the input, translates it all, then prints it.

  Returns:
    The exit status (0, 1 for an unusable run, 2 for bad flags or input; see the docstring).
  """
  try:
    inference.check_decoding_flags(beam_size=beam_size, batch_size=batch_size,
                                   average_last_k=average_last_k)
    if input_path:
      with open(input_path, "rb") as f:
        lines = decode_lines(f.read(), input_path)
    else:
      lines = decode_lines(stdin.read(), "the standard input")
    run = inference.load_run(workdir, step=step, average_last_k=average_last_k)
    decoding = run.config.decoding
    translations = translate_lines(
        run, lines,
        beam_size=decoding.beam_size if beam_size is None else beam_size,
        length_penalty=decoding.length_penalty if length_penalty is None else length_penalty,
        batch_size=batch_size,
    )
  except loop.UsageError as e:
    print(f"error: {e}", file=stderr)
    return loop.EXIT_USAGE
  except (loop.TrainingError, OSError) as e:
    print(f"error: {e}", file=stderr)
    return loop.EXIT_FAILED
  for translation in translations:
    print(translation, file=stdout)
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  sys.exit(run_command(
      _WORKDIR.value, input_path=_INPUT.value, beam_size=_BEAM_SIZE.value,
      length_penalty=_LENGTH_PENALTY.value, average_last_k=_AVERAGE_LAST_K.value,
      step=_STEP.value, batch_size=_BATCH_SIZE.value, stdin=sys.stdin.buffer,
      stdout=sys.stdout, stderr=sys.stderr))


if __name__ == "__main__":
  app.run(main)
