"""Using a trained run: the Translator API, the translate CLI (files, n-best, scores, streaming,
interactive) and the evaluate CLI (splits, file pairs, existing output, signatures, JSON)."""

import io
import json
import os
import sys

import numpy as np
import pytest
import sacrebleu

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "training"))
import training_helpers  # pylint: disable=wrong-import-position
import transformer  # pylint: disable=wrong-import-position
from transformer import evaluate  # pylint: disable=wrong-import-position
from transformer import translate  # pylint: disable=wrong-import-position
from transformer.training import errors  # pylint: disable=wrong-import-position
from transformer.training import loop  # pylint: disable=wrong-import-position

SOURCES = ["3 1 4 1 5", "", "9 2 6 5 3 5 8 9 7 9", "2 7", "   ", "1 8 2 8 1 8 2 8 4 5 9"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A short copy-task run (what it translates does not matter here, only that it decodes)."""
  config = training_helpers.tiny_copy_config(num_train_steps=40)
  config.training.test_split = ""
  config.training.checkpoint_every_steps = 20
  path = str(tmp_path_factory.mktemp("copy") / "run")
  loop.train_and_evaluate(config, path)
  return path


@pytest.fixture(scope="module")
def translator(workdir):
  return transformer.Translator.from_workdir(workdir, batch_size=4)


def test_translate_keeps_order_and_empty_lines_and_reuses_compiled_programs(translator):
  first = translator.translate(SOURCES)
  compiled = translator.num_compilations
  assert translator.translate(SOURCES) == first
  assert translator.translate(SOURCES[::-1]) == first[::-1]
  assert translator.num_compilations == compiled  # Same settings, same widths: no new trace.
  assert first[1] == "" and first[4] == "" and len(first) == len(SOURCES)
  one_by_one = [translator.translate([s])[0] for s in SOURCES]
  assert one_by_one == first  # Padding rows and batch neighbours change nothing.


def test_n_best_with_scores_best_first_and_refusals(translator):
  best = translator.translate(SOURCES[:1], beam_size=4, n_best=3, return_scores=True)[0]
  assert len(best) == 3 and [score for _, score in best] == sorted(
      [score for _, score in best], reverse=True)
  assert best[0][0] == translator.translate(SOURCES[:1], beam_size=4)[0]
  assert translator.translate(["", "2 7"], return_scores=True)[0] == ("", 0.0)
  with pytest.raises(ValueError, match="n_best=5 must be between 1 and beam_size=4"):
    translator.translate(SOURCES, beam_size=4, n_best=5)
  with pytest.raises(TypeError, match="a list of sentences, not a string"):
    translator.translate("3 1 4")
  with pytest.raises(ValueError, match="top_p must be in"):
    translator.sample(SOURCES, top_p=0.0)


def test_greedy_sampling_and_attention_weights(translator):
  greedy = translator.greedy(SOURCES)
  # Beam 1 without a length penalty is greedy decoding; temperature 0 sampling too.
  assert translator.translate(SOURCES, beam_size=1, length_penalty=0.0) == greedy
  assert translator.sample(SOURCES, temperature=0.0) == greedy
  hot = translator.sample(SOURCES, temperature=2.0, seed=3)
  assert translator.sample(SOURCES, temperature=2.0, seed=3) == hot
  assert hot[1] == "" and len(hot) == len(SOURCES)
  maps = translator.attention_weights("3 1 4", "3 1 4")
  assert maps["cross"].shape[-2:] == (4, 4) and len(maps["source_tokens"]) == 4
  np.testing.assert_allclose(maps["cross"].sum(-1), 1.0, rtol=1e-5)
  assert maps["target_tokens"][0] == "<s>" and maps["source_tokens"][-1] == "</s>"


def _translate(workdir, stdin=b"", **kwargs):
  out, err = io.StringIO(), io.StringIO()
  status = translate.run_command(
      workdir, input_path=kwargs.pop("input_path", None), beam_size=kwargs.pop("beam_size", None),
      length_penalty=None, average_last_k=1, step=None, batch_size=4,
      stdin=kwargs.pop("stdin_stream", io.BytesIO(stdin)), stdout=out, stderr=err, **kwargs)
  return status, out.getvalue(), err.getvalue()


def test_translate_cli_output_file_is_never_overwritten_without_the_flag(workdir, tmp_path,
                                                                         translator):
  source = tmp_path / "in.txt"
  source.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
  output = tmp_path / "out.txt"
  status, out, err = _translate(workdir, input_path=str(source), output_path=str(output))
  assert (status, out, err) == (0, "", "")
  assert output.read_text(encoding="utf-8").split("\n")[:-1] == translator.translate(SOURCES)
  output.write_text("mine\n", encoding="utf-8")
  status, _, err = _translate(workdir, input_path=str(source), output_path=str(output))
  assert status == errors.EXIT_USAGE and "exists; pass --overwrite" in err
  assert output.read_text(encoding="utf-8") == "mine\n"
  assert _translate(workdir, input_path=str(source), output_path=str(output),
                    overwrite=True)[0] == 0
  assert output.read_text(encoding="utf-8").split("\n")[:-1] == translator.translate(SOURCES)


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_path="/nonexistent/in.txt"), "--input /nonexistent/in.txt does not exist"),
    (dict(n_best=5, beam_size=4), "--n_best=5 is larger than --beam_size=4"),
    (dict(n_best=9), "--n_best=9 is larger than the run's beam size"),
    (dict(buffer_size=0), "--buffer_size must be >= 1, got 0"),
])
def test_translate_cli_refuses_bad_flags_in_one_line(workdir, kwargs, message):
  status, out, err = _translate(workdir, b"3 1\n", **kwargs)
  assert (status, out) == (errors.EXIT_USAGE, "")
  assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_translate_cli_n_best_scores_tsv_and_streaming(workdir, translator):
  stdin = ("\n".join(SOURCES) + "\n").encode()
  status, out, _ = _translate(workdir, stdin, n_best=2, beam_size=4, print_scores=True,
                              tsv=True)
  lines = out.split("\n")[:-1]
  assert status == 0 and len(lines) == 2 * len(SOURCES)
  expected = translator.translate(SOURCES, beam_size=4, n_best=2, return_scores=True)
  for i, (source, best) in enumerate(zip(SOURCES, expected)):
    for k, (text, score) in enumerate(best):
      assert lines[2 * i + k] == f"{source}\t{score:.4f}\t{text}"
  # A buffer of one line gives the same output as one buffer for everything.
  assert _translate(workdir, stdin, buffer_size=1)[1] == _translate(workdir, stdin)[1]


class _Terminal(io.BytesIO):
  """A stdin that is a terminal and records what was written before each line was read."""

  def __init__(self, data: bytes, stdout: io.StringIO):
    super().__init__(data)
    self.stdout = stdout
    self.seen = []

  def isatty(self):
    return True

  def readline(self, *args):
    self.seen.append(self.stdout.getvalue())
    return super().readline(*args)


def test_translate_cli_is_interactive_on_a_terminal(workdir, translator):
  out = io.StringIO()
  terminal = _Terminal(b"3 1 4\n2 7\n", out)
  status = translate.run_command(workdir, input_path=None, beam_size=None, length_penalty=None,
                                 average_last_k=1, step=None, batch_size=4, stdin=terminal,
                                 stdout=out, stderr=io.StringIO())
  first, second = translator.translate(["3 1 4", "2 7"])
  assert status == 0
  # Each translation was written before the next line was read.
  assert terminal.seen == ["", f"{first}\n", f"{first}\n{second}\n"]


def _evaluate_cli(capsys, **flag_values):
  """(exit status, stdout, stderr) of `python -m transformer.evaluate` with these flags."""
  out, err = io.StringIO(), io.StringIO()
  flag_values["json_output"] = flag_values.pop("json", False)
  status = evaluate.run_command(**flag_values, stdout=out, stderr=err)
  return status, out.getvalue(), err.getvalue()


def test_evaluate_scores_existing_output_like_sacrebleu(tmp_path, capsys):
  hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
  hyp.write_text("a man rides a bike .\ntwo dogs play\n", encoding="utf-8")
  ref.write_text("A man rides a bike .\ntwo dogs play in snow\n", encoding="utf-8")
  status, out, _ = _evaluate_cli(capsys, hypothesis_file=[str(hyp)],
                                 reference_file=[str(ref)], json=True)
  report = json.loads(out)["hyp.txt"]
  hyps, refs = hyp.read_text().splitlines(), [ref.read_text().splitlines()]
  assert status == 0
  assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
  assert report["bleu_lowercase"] == pytest.approx(
      sacrebleu.corpus_bleu(hyps, refs, lowercase=True).score)
  assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score)
  assert report["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
  assert "case:lc" in report["bleu_lowercase_signature"]
  status, out, _ = _evaluate_cli(capsys, hypothesis_file=[str(hyp)], reference_file=[str(ref)])
  assert status == 0 and out.startswith("hyp.txt: bleu ") and "chrf_signature: nrefs:1" in out


def test_evaluate_translates_several_sets_and_the_runs_split(workdir, tmp_path, capsys,
                                                             translator):
  sets = []
  for name, lines in (("a.src", SOURCES[:3]), ("b.src", SOURCES[3:])):
    source, reference = tmp_path / name, tmp_path / (name + ".ref")
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sets.append((str(source), str(reference)))
  status, out, _ = _evaluate_cli(
      capsys, workdir=workdir, split=["validation"], source_file=[s for s, _ in sets],
      reference_file=[r for _, r in sets], json=True)
  report = json.loads(out)
  assert status == 0 and set(report) == {"validation", "a.src", "b.src", "steps"}
  assert {"loss", "accuracy", "bleu", "chrf", "bleu_signature"} <= set(report["validation"])
  written = open(report["b.src"]["hypotheses"], encoding="utf-8").read().split("\n")[:-1]
  assert written == translator.translate(SOURCES[3:])
  assert report["steps"] == [40]


@pytest.mark.parametrize("make_flags, message", [
    (lambda p: dict(hypothesis_file=[p["hyp"]], reference_file=[p["short"]]),
     "{hyp} has 2 lines but {short} has 1"),
    (lambda p: dict(hypothesis_file=[p["hyp"]], reference_file=[p["missing"]]),
     "--reference_file {missing} does not exist"),
    (lambda p: dict(hypothesis_file=[p["hyp"], p["hyp"]], reference_file=[p["hyp"]]),
     "2 --hypothesis_file but 1 --reference_file"),
    (lambda p: dict(source_file=[p["hyp"]], reference_file=[p["hyp"]]),
     "--workdir is needed"),
])
def test_evaluate_refuses_bad_files_in_one_line(tmp_path, capsys, make_flags, message):
  paths = {"hyp": str(tmp_path / "hyp.txt"), "short": str(tmp_path / "short.txt"),
           "missing": str(tmp_path / "missing.txt")}
  (tmp_path / "hyp.txt").write_text("a\nb\n", encoding="utf-8")
  (tmp_path / "short.txt").write_text("a\n", encoding="utf-8")
  status, out, err = _evaluate_cli(capsys, **make_flags(paths))
  assert (status, out) == (errors.EXIT_USAGE, "")
  assert err.startswith(f"error: {message.format(**paths)}") and err.count("\n") == 1
