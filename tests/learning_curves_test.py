"""bench/learning_curves.py draws the curves of run directories and names a missing one."""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "bench", "learning_curves.py")


def _write_run(workdir, bleu_offset):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for step in (50, 100, 150):
      f.write(json.dumps({"step": step, "train/loss": 5.0 - step / 100,
                          "train/learning_rate": step * 1e-5}) + "\n")
      f.write(json.dumps({"step": step, "eval/loss": 4.5 - step / 100,
                          "eval/bleu": bleu_offset + step / 10,
                          "eval/bleu_lowercase": bleu_offset + step / 10 + 0.3}) + "\n")


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        timeout=120, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT))


def test_plots_two_runs_into_a_png(tmp_path):
  _write_run(tmp_path / "a", 10.0)
  _write_run(tmp_path / "b", 20.0)
  output = tmp_path / "curves.png"
  result = _run(f"--workdirs={tmp_path / 'a'},{tmp_path / 'b'}", "--labels=de-en,en-de",
                f"--output={output}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert output.stat().st_size > 10_000  # Three panels of lines, not an empty canvas.


def test_a_directory_without_metrics_is_named(tmp_path):
  result = _run(f"--workdirs={tmp_path}", f"--output={tmp_path / 'x.png'}")
  assert result.returncode != 0
  assert "metrics.jsonl does not exist" in result.stderr
  assert not (tmp_path / "x.png").exists()
