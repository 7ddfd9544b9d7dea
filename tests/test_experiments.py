"""moderncnn experiment: the verdict rule on made-up numbers, resumption after an interruption, the report,
and every experiment's --quick run end to end (slow; the fastest one in the default suite)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from moderncnn.cli import main
from moderncnn.experiments import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Arm,
    Claim,
    Experiment,
    RunOptions,
    combine,
    compare,
    framework,
    get_experiment,
    run_experiment,
)
from moderncnn.experiments.catalog import EXPERIMENTS, QUICK


# -- the verdict rule ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, rel, kw, expected", [
    ([91.0, 91.2, 91.1], [90.0, 90.2, 90.1], ">", {}, REPRODUCED),  # separated, claimed way
    ([90.0, 90.2, 90.1], [91.0, 91.2, 91.1], ">", {}, NOT_REPRODUCED),  # separated, the other way
    ([91.0, 90.0, 90.6], [90.5, 90.9, 90.2], ">", {}, INCONCLUSIVE),  # a gap inside the spread
    ([90.9, 91.0], [90.0, 90.95], ">", {}, INCONCLUSIVE),  # ranges overlap by a hair
    ([95.0], [90.0], ">", {}, INCONCLUSIVE),  # one seed: no spread, whatever the gap
    ([95.0, 95.1], [90.0], ">", {}, INCONCLUSIVE),
    ([10.0, 11.0], [20.0, 21.0], "<", {}, REPRODUCED),
    ([30.0, 31.0], [20.0, 21.0], "<", {}, NOT_REPRODUCED),
    ([1.0e6], [2.0e6], "<", {"deterministic": True}, REPRODUCED),  # exact counts need no spread
    ([3.0e6], [2.0e6], "<", {"deterministic": True}, NOT_REPRODUCED),
    ([4.46], [4.09], "==", {"deterministic": True, "rel_tol": 0.1}, REPRODUCED),
    ([5.0], [4.09], "==", {"deterministic": True, "rel_tol": 0.1}, NOT_REPRODUCED),
    ([10.0, 10.4], [10.2, 10.6], "==", {"rel_tol": 0.1}, REPRODUCED),  # overlap, means within 10%
    ([10.0, 10.1], [20.0, 20.1], "==", {"rel_tol": 0.1}, NOT_REPRODUCED),  # separated, far apart
    ([1.0, 30.0], [10.0, 60.0], "==", {"rel_tol": 0.1}, INCONCLUSIVE),  # too noisy to tell
    ([10.0, 10.1], [10.3, 10.4], "==", {"rel_tol": 0.1}, INCONCLUSIVE),  # separated but within tolerance
    ([10.0], [10.0], "==", {"rel_tol": 0.1}, INCONCLUSIVE),  # one sample each
    ([], [1.0, 2.0], ">", {}, INCONCLUSIVE),
])
def test_compare(a, b, rel, kw, expected):
    assert compare(a, b, rel, **kw) == expected


def test_compare_refuses_unknown_relation():
    with pytest.raises(ValueError, match="relation"):
        compare([1.0, 2.0], [1.0, 2.0], ">=")


@pytest.mark.parametrize("verdicts, expected", [
    ([REPRODUCED, REPRODUCED], REPRODUCED),
    ([REPRODUCED, INCONCLUSIVE], INCONCLUSIVE),
    ([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE], NOT_REPRODUCED),
    ([], INCONCLUSIVE),
])
def test_combine(verdicts, expected):
    assert combine(verdicts) == expected


# -- the catalog ------------------------------------------------------------------------------------------
def test_catalog_is_consistent():
    """Nine experiments; every claim names arms of its own table; every arm's model builds."""
    from moderncnn.experiments.framework import build_arm_model

    assert len(EXPERIMENTS) == 9
    for exp in EXPERIMENTS.values():
        names = [a.name for a in exp.arms]
        assert len(set(names)) == len(names), exp.name
        for c in exp.claims:
            assert c.a in names and c.b in names, (exp.name, c)
        if exp.needs_training:
            for arm in exp.arms:
                build_arm_model(arm, 10, 1)
    with pytest.raises(Exception, match="did you mean|Did you mean"):
        get_experiment("repvgg-branch")


# -- resumption and the report: a two-arm experiment with the real trainer ----------------------------------
TINY = Experiment(
    name="tiny",
    title="tiny",
    paper="nobody",
    claim="three branches beat one",
    setup="two tiny RepVGG networks, two steps",
    arms=(Arm("one", "repvgg_a0", {"num_blocks": (1, 1, 1, 1), "width_multiplier": (0.25, 0.25, 0.25, 0.25),
                                   "branches": ("3x3",)}),
          Arm("three", "repvgg_a0", {"num_blocks": (1, 1, 1, 1), "width_multiplier": (0.25, 0.25, 0.25, 0.25)})),
    claims=(Claim("three beat one", "top1", "three", ">", "one"),
            Claim("fewer parameters with one branch", "params", "one", "<", "three")),
    quick={**QUICK, "train_samples": 64, "val_samples": 64, "batch_size": 32, "threads": 1},
    speeds=("train_step",),
)


class Stop(Exception):
    pass


def test_interrupted_run_resumes_without_rerunning_finished_arms(tmp_path, monkeypatch):
    calls = []
    real = framework.train_arm

    def counting(values, datasets, keep=None):
        calls.append((values["model_kwargs"].get("branches"), values["seed"]))
        return real(values, datasets, keep)

    monkeypatch.setattr(framework, "train_arm", counting)
    opts = RunOptions(quick=True, seeds=2, out=str(tmp_path / "run"), progress=False)

    def interrupt(path):
        if len(calls) == 3:
            raise Stop

    opts.on_unit = interrupt
    with pytest.raises(Stop):
        run_experiment(TINY, opts)
    done = sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("seed*.json"))
    assert done == ["arms/one/seed0.json", "arms/one/seed1.json", "arms/three/seed0.json"]
    before = {p: (tmp_path / "run" / p).read_text() for p in done}
    assert not list((tmp_path / "run").rglob("*.tmp*"))  # written atomically (no temp file left)

    calls.clear()
    opts.on_unit = None
    summary = run_experiment(TINY, opts)
    assert calls == [(None, 1)]  # only the unfinished arm/seed trained
    for p, text in before.items():
        assert (tmp_path / "run" / p).read_text() == text
    assert [len(summary["arms"][a]["top1"]) for a in ("one", "three")] == [2, 2]
    assert summary["claims"][1]["verdict"] == REPRODUCED  # exact parameter counts
    assert summary["claims"][0]["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    report = (tmp_path / "run" / "tiny.md").read_text()
    assert f"**Verdict: {summary['verdict']}**" in report
    assert "| `one` |" in report and "| `three` |" in report and "(n=2)" in report
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["verdict"] == summary["verdict"]

    calls.clear()
    run_experiment(TINY, opts)  # everything done: nothing trains again
    assert calls == []


def test_cli_list_and_unknown(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    assert main(["experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["experiment", "repvgg-branches", "--seeds", "0"]) == 2


# -- every experiment end to end with --quick --------------------------------------------------------------
def _quick(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["experiment", name, "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    exp = get_experiment(name)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] and summary["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    assert set(summary["arms"]) == {a.name for a in exp.arms}
    for arm in exp.arms:
        assert summary["arms"][arm.name], arm.name  # every arm measured something
    assert (out / f"{name}.md").read_text().startswith(f"# {exp.title}")
    assert f"{name}: {summary['verdict']}" in printed
    return summary


def test_quick_large_kernel_cost(tmp_path, capsys):
    """The fastest experiment (operator timing, no training) in the default suite."""
    summary = _quick("large-kernel-cost", tmp_path, capsys)
    assert all(len(s["ours_ms"]) == 2 and s["macs_M"] for s in summary["arms"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "large-kernel-cost"])
def test_quick_end_to_end(name, tmp_path, capsys):
    summary = _quick(name, tmp_path, capsys)
    exp = get_experiment(name)
    if exp.needs_training:
        assert all(len(summary["arms"][a.name]["top1"]) == 1 for a in exp.arms)
    if exp.erf_images:
        assert all(0 < summary["arms"][a.name]["erf20"][0] <= 100 for a in exp.arms)


def test_full_run_estimate_scales_the_quick_per_image_cost_by_pixels(tmp_path):
    # a quick run at 32 px whose timed training step took 64 ms for 32 images (2 ms an image): the full run
    # trains at 64 px, so an image costs 4x as much; hand computation of framework.estimate_full_seconds
    from moderncnn.experiments.framework import Arm, Experiment, estimate_full_seconds, write_json

    exp = Experiment(name="toy", title="", paper="", claim="", setup="", claims=(), seeds=2,
                     arms=(Arm("a", "repvgg_a0"),),
                     train={"img_size": 64, "epochs": 2, "train_samples": 1000, "val_samples": 300},
                     quick={"img_size": 32, "epochs": 1, "train_samples": 256, "val_samples": 90, "batch_size": 64})
    write_json(tmp_path / "speed.json", {"a": {"train_step_ms": [60.0, 64.0, 70.0]}})
    quick_images = 4 * 64 + 90 / 3
    write_json(tmp_path / "arms" / "a" / "seed0.json",
               {"steps": 4, "batch_size": 64, "val_samples": 90, "wall_s": 0.002 * quick_images + 5.0,
                "train_time_s": 1.0})
    per_image = 0.002 * (64 / 32) ** 2
    expected = 2 * (per_image * (2 * 1000 + 2 * 300 / 3) + 5.0)
    assert estimate_full_seconds(exp, tmp_path) == pytest.approx(expected)
    # the same quick run with a full run at the quick run's size: no pixel factor
    same_size = dataclasses.replace(exp, train={**exp.train, "img_size": 32})
    assert estimate_full_seconds(same_size, tmp_path) == pytest.approx(2 * (0.002 * (2000 + 200) + 5.0))


@pytest.mark.parametrize("name", ["ratio-1/2", "", ".hidden"])
def test_arm_names_are_plain_folder_names(name):
    # an arm's results live in arms/<name>/: "ratio-1/2" once nested its results inside arm "ratio-1"'s folder
    from moderncnn.experiments.framework import Arm

    with pytest.raises(ValueError, match="plain folder name"):
        Arm(name, "repvgg_a0")
    assert all("/" not in a.name for e in EXPERIMENTS.values() for a in e.arms)
