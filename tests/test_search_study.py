"""The search as an Optuna study: resume, several workers on one storage, and `moderncnn search` end to end."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from moderncnn import create_model
from moderncnn.cli import main
from moderncnn.search.runner import SearchConfig, open_storage, pareto_front, run_search
from moderncnn.training.config import read_yaml

SRC = Path(__file__).resolve().parents[1] / "src"

# a two-stage space (few parameters: each suggestion is a database write) and a synthetic objective: the
# reward of a point without training, with the attributes the report reads
TINY_SPACE = """stages:
  - {stride: 1, channels: 8, layers: [1, 2]}
  - {stride: 2, channels: 16, layers: [1, 2, 3]}
"""
SYNTHETIC = textwrap.dedent("""
    import os, time
    from moderncnn.search.space import load_space

    def make_synthetic(space_file):
        space = load_space(space_file)

        def synthetic(trial, wait_for_other=False):
            p = space.suggest(trial)
            me = str(os.getpid())
            trial.set_user_attr("worker", me)
            if wait_for_other:  # hold the first trial until the other worker has started one: both take part
                for _ in range(600):
                    trials = trial.study.get_trials(deepcopy=False)
                    if any(t.user_attrs.get("worker") not in (None, me) for t in trials):
                        break
                    time.sleep(0.1)
            layers = p["s0_layers"] + p["s1_layers"]
            trial.set_user_attr("accuracy", 0.5 + 0.1 * layers)
            trial.set_user_attr("step_time_s", 0.01 * layers)
            trial.set_user_attr("params", 1000 * layers)
            trial.set_user_attr("stages", space.stage_table(p))
            return 0.5 + 0.1 * layers

        return synthetic
""")


def _synthetic(space_file):
    ns: dict = {}
    exec(SYNTHETIC, ns)
    return ns["make_synthetic"](space_file)


def _space(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return str(path)


def _cfg(tmp_path, **kw):
    return SearchConfig(space=_space(tmp_path), out=str(tmp_path / "run"), progress=False, seed=0, **kw)


def test_resumed_search_keeps_its_trials(tmp_path):
    calls = []
    objective = _synthetic(_space(tmp_path))

    def counted(trial):
        calls.append(trial.number)
        return objective(trial)

    first = run_search(_cfg(tmp_path, trials=3), objective=counted)
    assert calls == [0, 1, 2] and (tmp_path / "run" / "search.db").is_file()
    before = {t.number: (t.params, t.value) for t in first.study.trials}
    again = run_search(_cfg(tmp_path, trials=5), objective=counted)  # same folder: the default SQLite study
    assert calls == [0, 1, 2, 3, 4]  # only the two missing trials ran
    after = {t.number: (t.params, t.value) for t in again.study.trials}
    assert len(after) == 5 and all(after[n] == before[n] for n in before)
    run_search(_cfg(tmp_path, trials=5), objective=counted)  # complete already: nothing runs
    assert len(calls) == 5
    assert (tmp_path / "run" / "best.yaml").is_file() and (tmp_path / "run" / "trials.csv").is_file()


@pytest.mark.parametrize("kind", ["journal", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_two_worker_processes_share_one_study(tmp_path, kind):
    storage = str(tmp_path / "study.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    script = tmp_path / "worker.py"
    script.write_text(SYNTHETIC + textwrap.dedent(f"""
        from moderncnn.search.runner import SearchConfig, run_search
        cfg = SearchConfig(space={_space(tmp_path)!r}, trials=8, sampler="reinforce", storage={storage!r},
                           out={str(tmp_path / "out")!r} + str(os.getpid()), progress=False)
        synthetic, first = make_synthetic(cfg.space), []
        def objective(trial):
            wait = not first
            first.append(trial.number)
            return synthetic(trial, wait_for_other=wait)
        run_search(cfg, objective=objective)
    """))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-2000:] for o in outs]
    study = optuna.load_study(study_name="search-tiny", storage=open_storage(storage, tmp_path))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 8 <= len(done) <= 9  # a worker stops once the study holds 8; the other may finish one more
    assert len({t.number for t in done}) == len(done)
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes ran trials of the one study


def test_pareto_front():
    # (accuracy, step time): higher accuracy and lower time win
    pts = [(0.9, 10.0), (0.8, 5.0), (0.85, 12.0), (0.95, 20.0), (0.8, 6.0)]
    assert pareto_front(pts) == [0, 1, 3]


def test_search_command_end_to_end(tmp_path, capsys):
    """`moderncnn search` with a 2-step proxy on Fashion-MNIST: report, plot, a best.yaml that builds; then a
    resumed command runs only the missing trial."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    out = tmp_path / "s"
    args = ["search", "--space", "efficientnetv2-nano", "--trials", "1", "--proxy-steps", "2", "--out", str(out),
            "-b", "16", "--val-samples", "32", "--timing-rounds", "1", "--threads", "1", "--seed", "0",
            "--sampler", "random", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "best 1 of 1 trials" in printed and "| trial | reward |" in printed
    log0 = out / "trials" / "trial-00000.log"
    stamp = log0.stat().st_mtime_ns
    assert main(args[:3] + ["--trials", "2"] + args[5:]) == 0
    assert log0.stat().st_mtime_ns == stamp  # trial 0 was not rerun
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 3
    study = optuna.load_study(study_name="search-efficientnetv2-nano", storage=open_storage(None, out))
    for t in study.trials:
        a = t.user_attrs
        assert 0.0 <= a["accuracy"] <= 1.0 and a["step_time_s"] > 0 and a["params"] > 0
        if "same_as" not in a:  # a point seen before is not trained again
            assert (out / "trials" / f"trial-{t.number:05d}.log").read_text().startswith("moderncnn train")
    # best.yaml is a training recipe (model + model_kwargs) and builds with create_model
    recipe = read_yaml(out / "best.yaml")
    model = create_model(recipe["model"], num_classes=10, in_chans=1, **recipe["model_kwargs"])
    best = max(study.trials, key=lambda t: t.value)
    assert [list(r) for r in yaml.safe_load((out / "best.yaml").read_text())["model_kwargs"]["stages"]] == \
        best.user_attrs["stages"]
    assert sum(p.numel() for p in model.parameters()) == best.user_attrs["params"]
    assert (out / "report.md").is_file()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "pareto.png").exists()
    else:
        assert (out / "pareto.png").stat().st_size > 1000
    assert not [p for p in out.iterdir() if p.name.startswith("tmp")]  # proxy run folders are removed


def test_search_command_rejects_bad_values(capsys):
    assert main(["search", "--trials", "0"]) == 2
    assert "--trials must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--sampler", "evolution"])


def test_baseline_is_b0_scaled_to_the_same_parameters():
    """--compare-baseline: EfficientNetV2-B0 compound-scaled (down, here) to the best network's parameter count."""
    from types import SimpleNamespace

    from moderncnn.analysis.complexity import count_params
    from moderncnn.search.runner import compare_with_baseline

    measured = []

    def measure(kwargs, tag):
        measured.append(tag)
        model = create_model("efficientnetv2_custom", num_classes=10, in_chans=1, **kwargs)
        return {"params": count_params(model), "accuracy": 0.5, "step_time_s": 0.1, "reward": 0.5}

    fake = SimpleNamespace(num_classes=10, in_chans=1, measure=measure)
    for target in (300_000, 3_000_000):
        out = compare_with_baseline(fake, SimpleNamespace(user_attrs={"params": target}))
        assert abs(out["params"] - target) / target < 0.2, (target, out)
        assert (out["phi"] < 0) == (target < 7e6)  # B0 itself has ~7 M parameters
    assert measured == ["baseline-b0-scaled"] * 2  # one proxy training each
