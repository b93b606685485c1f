"""`tvmnet tune`'s recipe on a tiny model (extended run): every step runs, a step that loses its
end-to-end A/B is taken back, and an interrupt keeps the records measured so far."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY_TUNE, host_class

TINY = [*TINY_TUNE, "--trials", "12", "--per-task", "1", "--no-warm-start"]


def records(db):
    f = db / "database_tuning_record.json"
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.exists() else []


@pytest.mark.tune
@pytest.mark.slow  # ~3 min on 2 cores
def test_recipe_runs_every_step_and_ends_with_the_end_to_end_ratio(tmp_path):
    from conftest import run_cli

    res = run_cli("tune", *TINY, "--log-dir", tmp_path, env={"TVMNET_TUNING_LOGS": str(tmp_path / "none")})
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [l for l in res.stdout.splitlines() if l.startswith("recipe step ")]
    assert [l.split(":")[0] for l in steps] == [
        "recipe step search",
        "recipe step picks in place",
        "recipe step GEMM round",
        "recipe step prune",
    ]
    assert "per-round ratio" in steps[0] and ("kept" in steps[0] or "taken back" in steps[0])
    last = res.stdout.splitlines()[-1]
    assert last.startswith("tune recipe done") and "end to end" in last and "per-round ratio" in last
    db = tmp_path / host_class()
    pruned = json.loads((db / "pruned_trials.json").read_text())
    assert len({r[0] for r in records(db)}) == len(records(db)) and sum(pruned.values()) > 0  # pruned, trials counted


@pytest.mark.tune
@pytest.mark.slow  # ~3 min on 2 cores
def test_a_step_that_loses_its_ab_is_taken_back(tmp_path, monkeypatch):
    """Nothing is ever fast enough (the bar at 0): the GEMM round, its records and its picks go;
    what stays is the search's (the first step on an empty log is kept: there was no log)."""
    import tvmnet.insitu.recipe as recipe
    import tvmnet.insitu.refine as refine
    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.tune.options import TuneOptions

    monkeypatch.setattr(recipe, "KEEP_BELOW", 0.0)
    monkeypatch.setattr(refine, "KEEP_BELOW", 0.0)
    opts = TuneOptions(model=ModelConfig(0.25, 32), target=load_target("x86"), trials=12, per_task=1,
                       log_dir=tmp_path, warm_start=False, progress=False, population=16)  # fmt: skip
    res = recipe.run_recipe(opts, say=lambda m: None)
    by = {s.name: s for s in res.steps}
    assert by["search"].kept and by["search"].trials == 12
    gemm = by["GEMM round"]
    assert gemm.trials > 0 and not gemm.kept and gemm.ratio is not None and "not faster" in gemm.note
    db = tmp_path / host_class()
    pruned = json.loads((db / "pruned_trials.json").read_text())
    assert sum(pruned.values()) + len(records(db)) == 12  # only the search's trials are left
    assert not (db / "in_situ").exists()  # no pick stayed
    assert res.ratio is not None


@pytest.mark.tune
@pytest.mark.slow  # ~1 min
def test_an_interrupt_during_the_recipe_keeps_the_records(tmp_path):
    cmd = [sys.executable, "-m", "tvmnet", "tune", *TINY_TUNE, "--trials", "400", "--per-task", "40",
           "--no-warm-start", "--log-dir", str(tmp_path)]  # fmt: skip
    env = dict(__import__("os").environ, TVMNET_TUNING_LOGS=str(tmp_path / "none"))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    db = tmp_path / host_class()
    deadline = time.time() + 600
    while len(records(db)) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    assert len(records(db)) >= 8  # kept
    assert "tune recipe stopped (interrupted)" in out
