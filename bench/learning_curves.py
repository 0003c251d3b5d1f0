r"""Learning curves of training runs, drawn from their metrics.jsonl into one PNG.

  python bench/learning_curves.py --workdirs=runs/multi30k_de_en,runs/multi30k_en_de \
    --labels="de->en,en->de" --output=bench/multi30k_learning_curves.png

(from the repository root; needs matplotlib, which the `test` extra installs).

Three panels against the training step: training loss (label-smoothed, with dropout) and
validation loss; validation BLEU (sacreBLEU, cased and lowercased); the learning rate. The
training loss is the mean over each logging window as train.py recorded it.
"""

import os

from absl import app
from absl import flags

from transformer import metrics

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories with a metrics.jsonl.",
                              required=True)
_LABELS = flags.DEFINE_list("labels", None, "One legend label per workdir; default the names.")
_OUTPUT = flags.DEFINE_string("output", "learning_curves.png", "PNG file to write.")
_TITLE = flags.DEFINE_string("title", "", "Figure title.")


def load_curves(workdir: str) -> dict[str, tuple[list[int], list[float]]]:
  """{metric name: (steps, values)} for every scalar in `workdir/metrics.jsonl`.

  Raises:
    FileNotFoundError: the workdir has no metrics.jsonl (not a train.py run directory).
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a train.py run directory?")
  curves = {}
  for record in metrics.read_jsonl(path):
    for name, value in record.items():
      if name != "step" and isinstance(value, (int, float)):
        steps, values = curves.setdefault(name, ([], []))
        steps.append(record["step"])
        values.append(float(value))
  return curves


def plot(runs: dict[str, dict], output: str, title: str = "") -> None:
  """Draws the loss, BLEU and learning-rate panels of labelled runs into the PNG `output`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  figure, (loss_axis, bleu_axis, rate_axis) = plt.subplots(1, 3, figsize=(15, 4.2))
  for index, (label, curves) in enumerate(runs.items()):
    color = f"C{index}"
    for name, style, suffix in (("train/loss", ":", "train"), ("eval/loss", "-", "validation")):
      if name in curves:
        loss_axis.plot(*curves[name], style, color=color, label=f"{label} {suffix}")
    for name, style, suffix in (("eval/bleu", "-", "cased"),
                                ("eval/bleu_lowercase", "--", "lowercased")):
      if name in curves:
        bleu_axis.plot(*curves[name], style, marker=".", color=color, label=f"{label} {suffix}")
    if "train/learning_rate" in curves:
      rate_axis.plot(*curves["train/learning_rate"], color=color, label=label)
  for axis, ylabel in ((loss_axis, "loss (nats/token)"), (bleu_axis, "validation BLEU"),
                       (rate_axis, "learning rate")):
    axis.set_xlabel("training step")
    # "2.5k" rather than "2500": five-digit step labels run into each other at this width.
    axis.xaxis.set_major_formatter(
        ticker.FuncFormatter(lambda step, _: f"{step / 1000:g}k" if step else "0"))
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  loss_axis.set_ylim(top=min(loss_axis.get_ylim()[1], 4.0))
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  figure.savefig(output, dpi=110)
  plt.close(figure)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  workdirs = _WORKDIRS.value
  labels = _LABELS.value or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    raise app.UsageError(f"{len(labels)} labels for {len(workdirs)} workdirs")
  plot({label: load_curves(w) for label, w in zip(labels, workdirs)}, _OUTPUT.value,
       _TITLE.value)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
