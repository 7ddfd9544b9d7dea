"""The GPU benchmark scripts run end to end on the CPU in their smoke modes.

They are meant for a lent GPU and a single call; a crash there wastes the device time, so their whole path
(every section, the table writer, the exit code) is exercised here at tiny sizes. The numbers are not
looked at, only that every row was written with a finite, positive ratio.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


def _run(args: list[str], env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ratios(table: str) -> list[float]:
    return [float(m) for m in re.findall(r"\| ([0-9.]+)× \|", table)]


@pytest.mark.slow
def test_bench_models_all_sections_on_cpu(tmp_path):
    out = tmp_path / "models.md"
    proc = _run(["benchmarks/bench_models.py", "--device", "cpu", "--img-size", "32", "--batch", "2",
                 "--train-batch", "2", "--quick", "--rounds", "1", "--iters", "1", "--models", "repvgg_a0",
                 "--compiled-models", "repvgg_a0", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| eager") or line.startswith("| compiled")
            or line.startswith("| train")]
    assert [r.split(" | ")[0] for r in rows] == ["| eager"] * 2 + ["| train"] + ["| compiled"] * 2
    ratios = _ratios(text)
    assert len(ratios) == 5 and all(r > 0 for r in ratios)
    assert "SMOKE TEST" in text


def test_bench_models_rejects_unknown_model(tmp_path):
    proc = _run(["benchmarks/bench_models.py", "--device", "cpu", "--models", "repvgg_a9",
                 "--out", str(tmp_path / "x.md")])
    assert proc.returncode == 2 and "repvgg_a9" in proc.stderr


@pytest.mark.slow
def test_large_kernel_dwconv_smoke_in_interpreter(tmp_path):
    out = tmp_path / "dw.md"
    proc = _run(["benchmarks/large_kernel_dwconv.py", "--smoke", "--out", str(out)],
                env_extra={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "RepLKNet-31B train step" in text
    op_rows = [line for line in text.splitlines() if re.match(r"\| \d+@\d+² \| \d+ \|", line)]
    assert len(op_rows) >= 4
    assert len(_ratios(text)) >= 2 * len(op_rows) + 1


def test_cpu_dwconv_smoke(tmp_path):
    out = tmp_path / "cpu.md"
    proc = _run(["benchmarks/cpu_dwconv.py", "--smoke", "--rounds", "1", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    # two op rows (fwd, f+b), two small-kernel shapes in two layouts (fwd, f+b), three model rows
    assert len(_ratios(text)) == 2 * 2 + 2 * 2 * 2 + 3
    assert all(r > 0 for r in _ratios(text))


def test_gpu_suite_flags_exist():
    """Every flag gpu_suite.sh passes is accepted by the script it is passed to (argparse would exit 2)."""
    suite = [line for line in (REPO / "benchmarks" / "gpu_suite.sh").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    for script in ("benchmarks/large_kernel_dwconv.py", "benchmarks/bench_models.py"):
        helptext = _run([script, "--help"]).stdout
        calls = [line for line in suite if script in line]
        assert calls, script
        for line in calls:
            for flag in re.findall(r"(--[a-z-]+)", line):
                assert flag in helptext, (script, flag)
        assert "--quick" in helptext  # passed through $QUICK


@pytest.mark.slow
def test_cpu_models_quick(tmp_path):
    """Every pair, every measurement, the table writer: one row per family with finite, positive ratios."""
    out = tmp_path / "cpu_models.md"
    proc = _run(["benchmarks/cpu_models.py", "--quick", "--repeat", "2", "--rounds", "1", "--warmup", "1",
                 "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "×" not in line
            and not line.startswith("| ours")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["convnext_tiny", "efficientnetv2_s", "repvgg_a2",
                                                     "mobilenext_100", "replknet_31b"]
    for r in rows:  # two runs -> "a / b" per ratio column; three ratio columns in bold
        bold = re.findall(r"\*\*([0-9.]+) / ([0-9.]+)\*\*", r)
        assert len(bold) == 3 and all(float(v) > 0 for pair in bold for v in pair), r
    assert "QUICK" in out.read_text()


def test_cpu_models_rejects_unknown_model(tmp_path):
    proc = _run(["benchmarks/cpu_models.py", "--models", "resnet50", "--out", str(tmp_path / "x.md")])
    assert proc.returncode == 2 and "resnet50" in proc.stderr
