r"""Scores translations: a run's splits, any pair of files, or existing output, like sacrebleu.

  python -m transformer.evaluate --workdir=runs/multi30k --split=test,validation --average_last_k=5
  python -m transformer.evaluate --workdir=runs/multi30k --source_file=a.de,b.de \
      --reference_file=a.en,b.en --beam_size=5
  python -m transformer.evaluate --hypothesis_file=out.en --reference_file=ref.en   # no model
  python -m transformer.evaluate --workdir=runs/multi30k --split=test --json

Each test set gets BLEU (cased, sacreBLEU's default), lowercased BLEU and chrF, each with its
sacreBLEU signature, on detokenized text; a run's split also gets loss, token accuracy and
perplexity. Translations are written to <workdir>/hypotheses/ (named after the set, checkpoint
steps, beam size and length penalty); nothing else in the workdir changes. Several sets are
comma-separated lists: --split, or --source_file (or --hypothesis_file) paired with
--reference_file. Prints one line per set (or, with --json, one JSON object).
Exit status: 0 done; 1 the workdir holds no usable run; 2 a bad flag or a missing or mismatched
file.
"""

import json
import os
import sys
from typing import TextIO

from absl import app
from absl import flags

from transformer import metrics as metrics_lib
from transformer import translator as translator_lib
from transformer.training import errors
from transformer.training import inference


def _files(value: str | None) -> list[str]:
  return [path for path in (value or "").split(",") if path]


def _read_lines(path: str, flag: str) -> list[str]:
  """The lines of a UTF-8 file (errors.UsageError naming the flag and the problem)."""
  if not os.path.isfile(path):
    raise errors.UsageError(f"--{flag} {path} does not exist (or is not a file)")
  try:
    with open(path, encoding="utf-8") as f:
      return [line.rstrip("\n").removesuffix("\r") for line in f]
  except UnicodeDecodeError as e:
    raise errors.UsageError(f"--{flag} {path} is not valid UTF-8: {e}") from e


def _file_sets(*, sources: list[str], hypotheses: list[str], references: list[str]) -> list[dict]:
  """[{"name", "sources" or "hypotheses", "references"}], every file read and line-counted."""
  given = sources or hypotheses
  if sources and hypotheses:
    raise errors.UsageError("give --source_file (translate, then score) or --hypothesis_file "
                            "(score existing output), not both")
  if len(given) != len(references):
    raise errors.UsageError(
        f"{len(given)} {'--source_file' if sources else '--hypothesis_file'} but "
        f"{len(references)} --reference_file: give one reference file per set")
  sets = []
  for path, reference in zip(given, references):
    lines = _read_lines(path, "source_file" if sources else "hypothesis_file")
    refs = _read_lines(reference, "reference_file")
    if len(lines) != len(refs):
      raise errors.UsageError(f"{path} has {len(lines)} lines but {reference} has {len(refs)}")
    if not refs:
      raise errors.UsageError(f"{reference} is empty")
    key = "sources" if sources else "hypotheses"
    sets.append({"name": os.path.basename(path), key: lines, "references": refs})
  return sets


def evaluate(*, workdir: str | None = None, splits: list[str] = (), source_files: list[str] = (),
             reference_files: list[str] = (), hypothesis_files: list[str] = (), step=None,
             average_last_k: int = 1, beam_size: int | None = None,
             length_penalty: float | None = None, batch_size: int = 32) -> dict:
  """Scores every requested set; the library behind the command (arguments as its flags).

  Returns:
    {set name: {metric: value, ...}} plus "steps" (the checkpoints used) when a run was loaded.

  Raises:
    errors.UsageError: bad arguments or files; errors.TrainingError: an unusable run.
  """
  inference.check_decoding_flags(beam_size=beam_size, batch_size=batch_size,
                                 average_last_k=average_last_k)
  sets = _file_sets(sources=list(source_files), hypotheses=list(hypothesis_files),
                    references=list(reference_files))
  needs_run = bool(splits) or bool(source_files)
  if needs_run and not workdir:
    raise errors.UsageError("--workdir is needed to evaluate --split or translate "
                            "--source_file (only --hypothesis_file scores without a model)")
  report = {}
  if not needs_run:
    for test_set in sets:
      report[test_set["name"]] = metrics_lib.score_translations(test_set["hypotheses"],
                                                                test_set["references"])
    return report
  loaded = inference.load_run(workdir, step=step, average_last_k=average_last_k)
  for split in splits:
    results = inference.evaluate_run(loaded, split, beam_size=beam_size,
                                     length_penalty=length_penalty)
    report[split] = {k.split("/", 1)[1]: v for k, v in results.items() if "/" in k}
  if sets:
    translator = translator_lib.Translator(loaded, batch_size=batch_size)
    beam_size = translator.decoding_config.beam_size if beam_size is None else beam_size
    alpha = (translator.decoding_config.length_penalty if length_penalty is None
             else length_penalty)
    for test_set in sets:
      hypotheses = translator.translate(test_set["sources"], beam_size=beam_size,
                                        length_penalty=alpha)
      path = inference.hypotheses_path(loaded, test_set["name"], beam_size=beam_size,
                                       length_penalty=alpha)
      inference.write_lines(path, hypotheses)
      scores = metrics_lib.score_translations(hypotheses, test_set["references"])
      report[test_set["name"]] = scores | {"hypotheses": path}
  report["steps"] = loaded.steps
  return report


def format_report(report: dict) -> str:
  """One line per set (its scores), then the signatures of its scores."""
  lines = []
  for name, results in report.items():
    if name == "steps":
      lines.append(f"checkpoint steps: {results}")
      continue
    values = [f"{metric} {value:.2f}" for metric, value in results.items()
              if isinstance(value, float) and metric != "tokens"]
    lines.append(f"{name}: " + ", ".join(values))
    lines += [f"  {metric}: {value}" for metric, value in results.items()
              if metric.endswith("signature") or metric == "hypotheses"]
  return "\n".join(lines)


def define_flags() -> None:
  """Defines the command's flags (called only when run as a program, never at import)."""
  flags.DEFINE_string("workdir", None, "Run directory written by train.py.")
  flags.DEFINE_list("split", None, "The run's splits to evaluate (default test when no file is "
                    "given), e.g. test,validation.")
  flags.DEFINE_list("source_file", None, "Source files to translate and score.")
  flags.DEFINE_list("reference_file", None, "Reference files, one per source / hypothesis file.")
  flags.DEFINE_list("hypothesis_file", None, "Existing translations to score (no model).")
  flags.DEFINE_boolean("json", False, "Print one JSON object instead of lines.")
  flags.DEFINE_integer("average_last_k", 1, "Average the last k checkpoints.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.DEFINE_integer("beam_size", None, "Beams; default the run's decoding config.")
  flags.DEFINE_float("length_penalty", None, "Length-penalty alpha; default the run's decoding "
                     "config.")
  flags.DEFINE_integer("batch_size", 32, "Sentences per beam-search batch (file sets).")


def run_command(*, workdir: str | None = None, split: list[str] | None = None,
                source_file: list[str] | None = None, reference_file: list[str] | None = None,
                hypothesis_file: list[str] | None = None, json_output: bool = False,
                average_last_k: int = 1, step: int | None = None, beam_size: int | None = None,
                length_penalty: float | None = None, batch_size: int = 32,
                stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
  """The command (arguments: its flags); prints the report and returns the exit status."""
  files = source_file or hypothesis_file
  splits = split if split is not None else ([] if files else ["test"])
  try:
    report = evaluate(
        workdir=workdir, splits=splits, source_files=source_file or [],
        reference_files=reference_file or [], hypothesis_files=hypothesis_file or [],
        step=step, average_last_k=average_last_k, beam_size=beam_size,
        length_penalty=length_penalty, batch_size=batch_size)
  except (errors.TrainingError, ValueError, OSError) as e:  # UsageError included: exit 2.
    return errors.report(e, stderr)
  print(json.dumps(report) if json_output else format_report(report), file=stdout)
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  sys.exit(run_command(
      workdir=values.workdir, split=values.split, source_file=values.source_file,
      reference_file=values.reference_file, hypothesis_file=values.hypothesis_file,
      json_output=values.json, average_last_k=values.average_last_k, step=values.step,
      beam_size=values.beam_size, length_penalty=values.length_penalty,
      batch_size=values.batch_size))


if __name__ == "__main__":
  define_flags()
  app.run(main)
