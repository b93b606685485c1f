"""A tiny real MetaSchedule tune: builds succeed (the builder fix), records land in the
per-target database, a rerun resumes, SIGTERM keeps records, bad logs are refused intact."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY_TUNE, host_class, run_cli

pytestmark = pytest.mark.tune

TINY = TINY_TUNE


def records(db):
    path = db / "database_tuning_record.json"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def test_tiny_tune_measures_real_records(tuned):
    logs, res = tuned
    recs = records(logs / host_class())
    assert len(recs) >= 6, res.stdout + res.stderr[-2000:]
    assert all(r[1][1] and all(float(s) > 0 for s in r[1][1]) for r in recs)  # measured run times
    assert " 0 failed" in res.stdout


def test_rerun_resumes_without_spending_budget(tuned):
    logs, _ = tuned
    before = len(records(logs / host_class()))
    res = run_cli("tune", *TINY, "--kernels", "matmul", "--trials", "12", "--per-task", "2", "--log-dir", logs)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "nothing to do" in res.stderr or "0 new trials" in res.stdout
    assert len(records(logs / host_class())) == before


@pytest.mark.slow  # extended run: test_logs' exact-class test applies a tuned log and validates too (~45 s)
def test_compile_applies_the_log_and_validates(tuned, tmp_path):
    logs, _ = tuned
    out = tmp_path / "tuned"
    res = run_cli("compile", "--alpha", "0.25", "--resolution", "32", "--tuning-log", logs / host_class(), "-o", out)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["tuning"]["kernels_tuned"] >= 6 and meta["tuning"]["log"].endswith(host_class())
    assert meta["tuning"]["match"] == "given" and meta["tuning"]["class"] == host_class()
    assert f"{meta['tuning']['kernels_tuned']} from tuning log" in res.stderr
    res = run_cli("validate", out)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    "content", [pytest.param('[0, ["trace"\n', marks=pytest.mark.slow), "\n"], ids=["truncated record", "empty line"]
)
def test_corrupt_log_is_reported_and_left_untouched(tmp_path, content):
    db = tmp_path / host_class()
    db.mkdir()
    (db / "database_workload.json").write_text("")
    bad = db / "database_tuning_record.json"
    bad.write_text(content)
    for cmd in (
        ["tune", *TINY, "--trials", "4", "--log-dir", tmp_path],
        ["compile", "--alpha", "0.25", "--resolution", "32", "--tuning-log", db, "-o", tmp_path / "o"],
    ):
        res = run_cli(*cmd)
        assert res.returncode == 6, res.stderr
        assert str(bad) in res.stderr and "untouched" in res.stderr
        assert "Traceback" not in res.stderr
    assert bad.read_text() == content


def test_missing_log_is_an_error(tmp_path):
    res = run_cli(
        "compile", "--alpha", "0.25", "--resolution", "32", "--tuning-log", tmp_path / "nope", "-o", tmp_path / "o"
    )
    assert res.returncode == 6 and "tvmnet tune" in res.stderr


@pytest.mark.slow  # ~90 s each; in CI's extended run (`pytest -m slow`), keeping the default run under 15 min
@pytest.mark.parametrize("how", ["SIGTERM to the tuner", "Ctrl-C (SIGINT to its process group)"])
def test_interrupt_keeps_every_measured_record_and_resume_counts_them(tmp_path, how):
    """The signal only sets a flag; the run stops at the scheduler's next decision, exits 130,
    and every candidate measured so far is in the database (none lost, no crash)."""
    one_kernel = [
        "--kernels",
        "matmul1_",
        "--batch",
        "8",
        "--no-seeds",
    ]  # one GEMM task, small batches: records come fast
    cmd = [
        sys.executable,
        "-m",
        "tvmnet",
        "tune",
        *TINY,
        *one_kernel,
        "--trials",
        "400",
        "--per-task",
        "400",
        "--log-dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group, as a shell job would have
    deadline = time.time() + 600
    while time.time() < deadline and len(records(tmp_path / host_class())) < 2 and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None, "tuning ended before it could be interrupted"
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # the builder and runner workers get it too, as from a terminal
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in out
    kept = records(tmp_path / host_class())
    trials = int(re.search(r"(\d+) new trials", out).group(1))
    assert len(kept) >= 2 and len(kept) == trials, out  # every measured candidate is in the database
    assert all(float(s) > 0 for _, rec in kept for s in rec[1])
    # resume: the kept records count against the budget, so a budget equal to them runs nothing
    res = run_cli("tune", *TINY, *one_kernel, "--trials", str(len(kept)), "--per-task", "400", "--log-dir", tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{len(kept)} trials already in" in res.stderr and "nothing to do" in res.stderr
    assert len(records(tmp_path / host_class())) == len(kept)


@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~30 s
def test_prune_keeps_best_and_resume_accounting(tuned, tmp_path):
    import shutil

    logs, _ = tuned
    db = tmp_path / host_class()
    shutil.copytree(logs / host_class(), db)
    before = records(db)
    res = run_cli("prune-log", db)
    assert res.returncode == 0, res.stderr
    after = records(db)
    workloads = {r[0] for r in before}
    assert len(after) == len(workloads) < len(before)
    best = {}
    for wl, (_, secs, *_) in before:
        mean = sum(float(s) for s in secs) / len(secs)
        best[wl] = min(best.get(wl, mean), mean)
    # the kept record of each kernel is its fastest (workload indices may be renumbered: compare the set)
    kept = sorted(sum(float(s) for s in r[1][1]) / len(r[1][1]) for r in after)
    assert kept == pytest.approx(sorted(best.values()))
    # pruned trials still count: the same budget runs nothing new
    res = run_cli("tune", *TINY, "--kernels", "matmul", "--trials", "12", "--per-task", "2", "--log-dir", tmp_path)
    assert res.returncode == 0 and "nothing to do" in res.stderr, res.stderr[-2000:]


@pytest.mark.slow  # extended run: three tune runs, ~190 s (the rewrite itself is checked in the default run below)
def test_resume_retimes_the_earlier_best_and_replaces_their_records(tuned, tmp_path):
    """A resumed tune measures the kernel's best earlier schedules again first, and they replace
    that kernel's earlier records (whose times another run took): still counted as trials,
    the database before kept in the cache, the rest of the directory (in_situ/) untouched."""
    import shutil

    logs, _ = tuned
    db = tmp_path / host_class()
    shutil.copytree(logs / host_class(), db)
    (db / "in_situ").mkdir(exist_ok=True)
    (db / "in_situ" / "note.txt").write_text("kept")
    before = records(db)
    old_times = {json.dumps(r[1][1]) for r in before}
    one = ["--kernels", "matmul1_", "--per-task", "4"]
    res = run_cli("tune", *TINY, *one, "--trials", "4", "--log-dir", tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "re-timing: 1 kernel(s) have records from earlier runs" in res.stderr, res.stderr[-2000:]
    n = int(re.search(r"re-timed (\d+) schedule", res.stderr).group(1))
    dropped = int(re.search(r"the (\d+) earlier record", res.stderr).group(1))
    assert 1 <= n <= 2 and dropped >= 1
    after = records(db)
    assert len(after) == len(before) - dropped + n
    fresh = [r for r in after if json.dumps(r[1][1]) not in old_times]
    assert len(fresh) == n and all(float(s) > 0 for r in fresh for s in r[1][1])  # measured now
    assert sum(json.loads((db / "pruned_trials.json").read_text()).values()) >= dropped  # still trials
    assert (db / "in_situ" / "note.txt").read_text() == "kept"
    assert "nothing to do" in res.stderr  # the re-timed records filled the budget of 4
    res = run_cli("tune", *TINY, *one, "--trials", "4", "--log-dir", tmp_path)
    assert "nothing to do" in res.stderr and "re-timing" not in res.stderr  # no budget: nothing re-timed
    res = run_cli("tune", *TINY, *one, "--trials", "5", "--per-task", "5", "--no-retime", "--log-dir", tmp_path)
    assert res.returncode == 0 and "re-timing" not in res.stderr, res.stderr[-2000:]


def test_replacing_a_kernels_records_keeps_the_rest_and_counts_the_dropped(tuned, tmp_path):
    """What a resumed tune does with its re-timed records (logs.replace_kernel_records): that
    kernel's earlier records leave, counted as trials; other kernels' records, class.json and
    in_situ/ stay; the database before is moved to the cache whole."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    from tvmnet.tune.logs import copy_record, open_database, pruned_counts, replace_kernel_records, wl_key

    logs, _ = tuned
    db = tmp_path / host_class()
    shutil.copytree(logs / host_class(), db)
    (db / "in_situ").mkdir(exist_ok=True)
    (db / "in_situ" / "note.txt").write_text("kept")
    old = open_database(db).get_all_tuning_records()
    key = wl_key(old[0].workload)
    mine = [r for r in old if wl_key(r.workload) == key]
    fresh = ms.database.MemoryDatabase()
    copy_record(fresh, mine[0])
    dropped, backup = replace_kernel_records(db, fresh)
    assert dropped == len(mine)
    new = open_database(db).get_all_tuning_records()
    assert len(new) == len(old) - len(mine) + 1
    assert sorted(wl_key(r.workload) for r in new if wl_key(r.workload) != key) == sorted(
        wl_key(r.workload) for r in old if wl_key(r.workload) != key
    )
    assert pruned_counts(db)[key] == len(mine)
    assert (db / "in_situ" / "note.txt").read_text() == "kept" and (db / "class.json").is_file()
    assert len(open_database(backup).get_all_tuning_records()) == len(old)


def test_merge_log_adds_records_once_and_refuses_another_class(tuned, tmp_path):
    logs, _ = tuned
    src = logs / host_class()
    n = len(records(src))
    dest = tmp_path / "shipped" / host_class()
    res = run_cli("merge-log", src, dest)
    assert res.returncode == 0, res.stderr
    assert len(records(dest)) == n and (dest / "class.json").is_file()
    assert run_cli("merge-log", src, dest).returncode == 0
    assert len(records(dest)) == n  # nothing added twice
    other = tmp_path / "other"
    other.mkdir()
    for f in src.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    info = json.loads((other / "class.json").read_text())
    (other / "class.json").write_text(json.dumps(dict(info, key="x86_64-othercpu-avx2-2c")))  # never this host's
    before = (dest / "database_tuning_record.json").read_bytes()
    res = run_cli("merge-log", other, dest)
    assert res.returncode == 6 and "valid only on the machine class" in res.stderr
    assert (dest / "database_tuning_record.json").read_bytes() == before


@pytest.mark.unit
def test_first_pass_only_when_the_main_batch_is_bigger_and_the_budget_covers_it():
    from tvmnet.tune.scheduler import FIRST_PASS, first_pass_size

    assert first_pass_size(64, FIRST_PASS * 13, 13) == FIRST_PASS
    assert first_pass_size(64, FIRST_PASS * 13 - 1, 13) == 0  # a tiny tune: the main search's round-robin
    assert first_pass_size(FIRST_PASS, 10000, 13) == 0  # --batch no bigger: nothing to gain


@pytest.mark.unit
def test_every_kernel_with_a_share_of_the_time_gets_one_search_batch_before_the_gradient_rule():
    from tvmnet.tune.scheduler import COVER_SHARE, uncovered_task

    # weighted times (us): two GEMMs, a depthwise conv timed only by the warm start (2.4%), a
    # trivial kernel (0.1%), one without a time (the first pass's business)
    cost = {0: 1000.0, 1: 600.0, 2: 40.0, 3: 1.6}
    alive, searched = [0, 1, 2, 3, 4], set()
    order = []
    while (i := uncovered_task(cost, alive, searched, COVER_SHARE)) is not None:
        order.append(i)
        searched.add(i)
    assert order == [0, 1, 2]  # largest first, the trivial one left to the rule
    assert uncovered_task(cost, [0, 1, 3], set(), COVER_SHARE) == 0
    assert uncovered_task(cost, [2], {2}, COVER_SHARE) is None  # at most one batch each
    assert uncovered_task({}, [0, 1], set(), COVER_SHARE) is None


@pytest.mark.tune
@pytest.mark.slow  # extended run: ~60 s
def test_first_pass_gives_an_untimed_kernel_a_small_random_batch_then_the_search_goes_on(tmp_path):
    from tvmnet.tune.scheduler import FIRST_PASS

    res = run_cli(
        "tune",
        *TINY_TUNE,
        "--kernels",
        "fused_conv2d8_",
        "--trials",
        str(2 * FIRST_PASS),
        "--batch",
        "32",
        "--log-dir",
        tmp_path,
        "--no-warm-start",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"first pass: {FIRST_PASS} random schedules for each of 1 kernel(s)" in res.stderr
    assert "[INFO]" not in res.stderr + res.stdout  # MetaSchedule's INFO lines and tables stay in its files
    recs = records(tmp_path / host_class())
    # the search ran after it (its one batch of --batch may overshoot the budget, as MetaSchedule does)
    assert FIRST_PASS < len(recs) <= FIRST_PASS + 32 and all(r[1][1] for r in recs)


@pytest.mark.unit
def test_estimate_options_refuse_a_board_link_and_a_gpu_and_keep_their_own_directory(tmp_path):
    from tvmnet import ModelConfig, load_target
    from tvmnet.core.endpoint import Endpoint
    from tvmnet.core.errors import UsageError
    from tvmnet.proxy.tuning import PROXY_RHO, RHO_BAR, TRUSTED_KINDS
    from tvmnet.tune.options import TuneOptions

    model = ModelConfig(0.25, 32)
    with pytest.raises(UsageError, match="drop --rpc"):
        TuneOptions(model=model, target=load_target("rpi4"), estimate=True, rpc=Endpoint(rpc="127.0.0.1:9090"))
    with pytest.raises(UsageError, match="CPU targets"):
        TuneOptions(model=model, target=load_target("cuda"), estimate=True)
    opts = TuneOptions(model=model, target=load_target("rpi4"), estimate=True, log_dir=tmp_path)
    assert opts.database == tmp_path / "estimated" / "aarch64-cortex-a72-neon-4c"
    assert (
        TuneOptions(model=model, target=load_target("rpi4"), log_dir=tmp_path).database
        == tmp_path / "aarch64-cortex-a72-neon-4c"
    )
    # only kinds whose measured rank agreement reaches the bar are tuned by the proxy
    assert set(TRUSTED_KINDS) == {k for k, rho in PROXY_RHO.items() if rho >= RHO_BAR} >= {"pointwise GEMM"}
    assert "depthwise conv" not in TRUSTED_KINDS
    from tvmnet.proxy.tuning import trusted_kinds

    # int8 (Zen 4 int8 records): the depthwise convs and the stem rank well enough, the classifier not
    assert set(trusted_kinds("int8")) == {"stem conv", "depthwise conv"}
    assert set(trusted_kinds()) == set(TRUSTED_KINDS)


_LIGHT_INTRIN_PROBE = r"""
import sys
from tvm import te
from tvm.s_tir import TensorIntrin
from tvm.s_tir import meta_schedule as ms
from tvmnet.core.targets import load_target
from tvmnet.tune.measure import tune_contexts

spec = load_target(sys.argv[1])
a = te.placeholder((16, 16), name="a")
b = te.placeholder((16, 16), name="b")
k = te.reduce_axis((0, 16), name="k")
c = te.compute((16, 16), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
import tvm
mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
task = ms.ExtractedTask("mm", mod, spec.tvm_target(), [mod], 1)
ctx = tune_contexts([task], sys.argv[3])[0][0]
assert ctx.generate_design_space(), "no design space"
loaded = sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("tvm.s_tir.tensor_intrin."))
print(" ".join(loaded), TensorIntrin.get(sys.argv[2]) is not None)
"""


@pytest.mark.parametrize(
    "target, family, intrin",
    [("x86", "x86", "dot_16x4_vnni"), ("rpi4", "arm_cpu dot_product_common", "dot_4x4_i8i8s32_neon")],
)
def test_tune_contexts_load_only_the_targets_tensor_intrinsics(target, family, intrin, tmp_path):
    """A tune context imports every backend's tensor intrinsics (75-90 s on 2 cores, CUDA's ~50 s)
    unless tvmnet registers the light package first: only the target's family is loaded, and its
    intrinsics (those MetaSchedule's x86/ARM rules name) are registered."""
    res = subprocess.run(
        [sys.executable, "-c", _LIGHT_INTRIN_PROBE, target, intrin, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[-1].split() == family.split() + ["True"], res.stdout  # no cuda, rocm, ...
