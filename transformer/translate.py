r"""Translates sentences with a trained run (beam search, Vaswani et al., 2017, section 6.1).

  echo "Ein Mann fährt Fahrrad." | python -m transformer.translate --workdir=runs/multi30k
  python -m transformer.translate --workdir=runs/multi30k --input=test.de --output=test.hyp \
      --average_last_k=5 --beam_size=5
  python -m transformer.translate --workdir=runs/multi30k --n_best=4 --print_scores --tsv
  python -m transformer.translate --workdir=runs/multi30k            # a terminal: interactive

Reads one source sentence per line (stdin or --input, UTF-8) and writes one translation per
line, in order (stdout or --output, which is never overwritten without --overwrite). The model
loads once. Piped input streams: --buffer_size lines are read, translated and written at a
time, so a file of any length runs in bounded memory. When stdin is a terminal (or with
--interactive) each line is translated as soon as it is entered. Empty lines give empty lines.

With --n_best=K, K lines per source, best first. Columns, tab-separated: the source (--tsv),
the score log P(Y) / lp(|Y|) (--print_scores), the translation.

Writes nothing to the workdir. Exit status: 0 done; 1 the workdir holds no usable run or
checkpoint; 2 a bad flag, a missing input, an existing output, or input that is not UTF-8 (the
message names the line; lines before it are already written).
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO, TextIO

from absl import app
from absl import flags

from transformer import translator as translator_lib
from transformer.training import errors
from transformer.training import inference


def _decode_line(raw: bytes, number: int, name: str) -> str:
  """One line of input without its line end (errors.UsageError if it is not UTF-8)."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise errors.UsageError(f"{name} is not valid UTF-8: line {number} holds the byte "
                            f"0x{raw[e.start]:02x} (offset {e.start} of the line)") from e
  return text.rstrip("\n").removesuffix("\r")


def read_chunks(stream: BinaryIO, name: str, size: int) -> Iterator[list[str]]:
  """Lists of at most `size` lines of `stream`, as they arrive (size 1: line by line)."""
  chunk = []
  for number, raw in enumerate(iter(stream.readline, b""), start=1):
    chunk.append(_decode_line(raw, number, name))
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def format_lines(sources: list[str], hypotheses: list, *, tsv: bool, print_scores: bool,
                 n_best: int) -> list[str]:
  """Output lines: per source its n_best hypotheses, columns [source] [score] translation."""
  lines = []
  for source, best in zip(sources, hypotheses):
    for text, score in (best if n_best > 1 else [best]):
      columns = ([source] if tsv else []) + ([f"{score:.4f}"] if print_scores else []) + [text]
      lines.append("\t".join(column.replace("\t", " ").replace("\n", " ")
                             for column in columns))
  return lines


def _check_flags(*, input_path, output_path, overwrite, n_best, beam_size, buffer_size,
                 batch_size, average_last_k) -> None:
  inference.check_decoding_flags(beam_size=beam_size, batch_size=batch_size,
                                 average_last_k=average_last_k)
  for name, value in (("n_best", n_best), ("buffer_size", buffer_size)):
    if value < 1:
      raise errors.UsageError(f"--{name} must be >= 1, got {value}")
  if beam_size is not None and n_best > beam_size:
    raise errors.UsageError(f"--n_best={n_best} is larger than --beam_size={beam_size}")
  if input_path and not os.path.isfile(input_path):
    raise errors.UsageError(f"--input {input_path} does not exist (or is not a file)")
  if output_path and os.path.exists(output_path) and not overwrite:
    raise errors.UsageError(f"--output {output_path} exists; pass --overwrite to replace it")


def run_command(workdir: str, *, input_path: str | None, beam_size: int | None,
                length_penalty: float | None, average_last_k: int, step: int | None,
                batch_size: int, stdin: BinaryIO, stdout: TextIO, stderr: TextIO,
                output_path: str | None = None, overwrite: bool = False, n_best: int = 1,
                print_scores: bool = False, tsv: bool = False, interactive: bool | None = None,
                buffer_size: int = 1000) -> int:
  """The command: checks the flags, loads the run once, then translates chunk by chunk.

  Args:
    interactive: translate each line as it arrives; None means "when stdin is a terminal".
    (the others: the flags of the same names)

  Returns:
    The exit status (0, 1 for an unusable run, 2 for bad flags or input; see the docstring).
  """
  output = None
  try:
    _check_flags(input_path=input_path, output_path=output_path, overwrite=overwrite,
                 n_best=n_best, beam_size=beam_size, buffer_size=buffer_size,
                 batch_size=batch_size, average_last_k=average_last_k)
    translator = translator_lib.Translator.from_workdir(
        workdir, step=step, average_last_k=average_last_k, batch_size=batch_size)
    if n_best > (beam_size or translator.decoding_config.beam_size):
      raise errors.UsageError(f"--n_best={n_best} is larger than the run's beam size "
                              f"{translator.decoding_config.beam_size}; raise --beam_size")
    if interactive is None:
      interactive = not input_path and stdin.isatty()
    name = input_path or "the standard input"
    if output_path:
      output = open(output_path, "w" if overwrite else "x", encoding="utf-8")
    else:
      output = stdout
    with open(input_path, "rb") if input_path else contextlib.nullcontext(stdin) as source:
      for chunk in read_chunks(source, name, 1 if interactive else buffer_size):
        hypotheses = translator.translate(chunk, beam_size=beam_size,
                                          length_penalty=length_penalty, n_best=n_best,
                                          return_scores=True)
        for line in format_lines(chunk, hypotheses, tsv=tsv, print_scores=print_scores,
                                 n_best=n_best):
          print(line, file=output)
        output.flush()
  except (errors.TrainingError, OSError) as e:  # UsageError included: exit 2.
    return errors.report(e, stderr)
  finally:
    if output is not None and output is not stdout:
      output.close()
  return 0


def define_flags() -> None:
  """Defines the command's flags (called only when run as a program, never at import)."""
  flags.DEFINE_string("workdir", None, "Run directory written by train.py.", required=True)
  flags.DEFINE_string("input", None, "File of source sentences; default stdin.")
  flags.DEFINE_string("output", None, "File for the translations; default stdout.")
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --output file.")
  flags.DEFINE_integer("beam_size", None, "Beams; default the run's decoding config.")
  flags.DEFINE_float("length_penalty", None, "Length-penalty alpha; default the run's decoding "
                     "config.")
  flags.DEFINE_integer("n_best", 1, "Translations per source, best first (<= beam size).")
  flags.DEFINE_boolean("print_scores", False, "Write each translation's score before it.")
  flags.DEFINE_boolean("tsv", False, "Write the source, a tab, then the translation.")
  flags.DEFINE_boolean("interactive", None, "Translate each line as it arrives; default: when "
                       "stdin is a terminal.")
  flags.DEFINE_integer("buffer_size", 1000, "Lines read, translated and written at a time.")
  flags.DEFINE_integer("average_last_k", 1, "Average the last k checkpoints.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.DEFINE_integer("batch_size", 32, "Sentences per beam-search batch.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  sys.exit(run_command(
      values.workdir, input_path=values.input, beam_size=values.beam_size,
      length_penalty=values.length_penalty, average_last_k=values.average_last_k,
      step=values.step, batch_size=values.batch_size, stdin=sys.stdin.buffer,
      stdout=sys.stdout, stderr=sys.stderr, output_path=values.output,
      overwrite=values.overwrite, n_best=values.n_best, print_scores=values.print_scores,
      tsv=values.tsv, interactive=values.interactive, buffer_size=values.buffer_size))


if __name__ == "__main__":
  define_flags()
  app.run(main)
