r"""Evaluates a trained run on a split: loss, token accuracy, perplexity and (translation) BLEU.

  python -m transformer.evaluate --workdir=runs/multi30k --split=test --average_last_k=5

Prints one JSON object and writes the hypotheses to <workdir>/hypotheses/ (nothing else in the
workdir changes). Exit status: 0 done; 1 the workdir holds no usable run; 2 a bad flag.
"""

import json
import os
import sys

from absl import app
from absl import flags

from transformer import data as data_lib
from transformer.training import evaluation
from transformer.training import inference
from transformer.training import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by train.py.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split: validation or test.")
_AVERAGE_LAST_K = flags.DEFINE_integer("average_last_k", 1, "Average the last k checkpoints.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", None, "Beams; default the run's decoding config.")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", None, "Length-penalty alpha; default the "
                                     "run's decoding config.")


def evaluate_run(run: inference.LoadedRun, split: str, *, beam_size: int,
                 length_penalty: float) -> dict:
  """Loss / accuracy / perplexity (and BLEU for translation) of `run` on `split`."""
  cfg = run.config
  dataset = data_lib.make_eval_dataset(cfg.data, run.tokenizer, split, task=cfg.training.task,
                                       num_data_shards=run.setup.mesh.size)
  results = evaluation.evaluate_loss(run.setup, run.state, dataset)
  results = {f"{split}/{k.split('/', 1)[1]}": v for k, v in results.items()}
  results["steps"] = run.steps
  if cfg.training.task == "translation":
    translator = evaluation.Translator.create(
        run.setup, beam_size=beam_size, alpha=length_penalty,
        max_decode_len=cfg.data.max_len + cfg.decoding.max_extra_length,
    )
    suffix = f"avg{len(run.steps)}_" if len(run.steps) > 1 else ""
    # The decoding settings are in the name, so a beam / length-penalty sweep keeps every output.
    filename = (f"{split}_eval_{suffix}step{run.steps[-1]}_beam{beam_size}"
                f"_lp{length_penalty:g}.txt")
    path = os.path.join(run.workdir, "hypotheses", filename)
    scores, _ = evaluation.evaluate_bleu(translator, run.state, dataset, run.tokenizer,
                                         output_path=path)
    results.update({f"{split}/{name}": value for name, value in scores.items()})
    results["hypotheses"] = path
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    inference.check_decoding_flags(beam_size=_BEAM_SIZE.value, batch_size=1,
                                   average_last_k=_AVERAGE_LAST_K.value)
    run = inference.load_run(_WORKDIR.value, step=_STEP.value,
                             average_last_k=_AVERAGE_LAST_K.value)
    decoding = run.config.decoding
    results = evaluate_run(
        run, _SPLIT.value,
        beam_size=decoding.beam_size if _BEAM_SIZE.value is None else _BEAM_SIZE.value,
        length_penalty=(decoding.length_penalty if _LENGTH_PENALTY.value is None
                        else _LENGTH_PENALTY.value),
    )
  except loop.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(loop.EXIT_USAGE)
  except (loop.TrainingError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(loop.EXIT_FAILED)
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
