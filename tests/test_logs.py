"""Tuning logs keyed by machine class: the lookup compile does (exact, nearest, none) and the
warm start of a tune on a class without logs (records of another class are re-measured here,
never copied with their times)."""

import json
import re
import shutil

import pytest
from conftest import host_class, run_cli

SMALL = ["--alpha", "0.25", "--resolution", "32"]


def write_class(d, key, arch="x86_64", mcpu="somecpu", isa="avx2", cores=2):
    d.mkdir(parents=True, exist_ok=True)
    (d / "class.json").write_text(json.dumps({"key": key, "arch": arch, "mcpu": mcpu, "isa": isa, "cores": cores}))
    for f in ("database_workload.json", "database_tuning_record.json"):
        (d / f).touch()


def records(db):
    return [json.loads(l) for l in (db / "database_tuning_record.json").read_text().splitlines() if l.strip()]


def write_arm_class(root):
    write_class(
        root / "aarch64-cortex-a72-neon-4c",
        "aarch64-cortex-a72-neon-4c",
        arch="aarch64",
        mcpu="cortex-a72",
        isa="neon",
        cores=4,
    )


def compile_with_logs(root, out):
    """Compile MobileNet 0.25-32 with ``root`` as the shipped logs; (tuning metadata, compile's log line)."""
    res = run_cli("compile", *SMALL, "-o", out, env={"TVMNET_TUNING_LOGS": str(root)})
    assert res.returncode == 0, res.stderr
    line = next((l for l in res.stderr.splitlines() if "this machine is class" in l), "")
    return json.loads((out / "metadata.json").read_text())["tuning"], line


def relabel(src, dst, key, **cls):
    """A copy of the database ``src`` presented as another machine class."""
    shutil.copytree(src, dst)
    (dst / "class.json").unlink()
    write_class(dst, key, **cls)


@pytest.mark.unit
def test_nearest_class_ranks_same_isa_then_mcpu_then_cores_and_never_crosses_arch(tmp_path):
    from tvmnet.core.targets import load_target
    from tvmnet.tune.classes import class_distance, nearest_class
    from tvmnet.tune.logs import list_classes

    spec = load_target('{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}')  # avx2
    assert nearest_class(spec, tmp_path) is None
    write_class(tmp_path / "a", "aarch64-cortex-a72-neon-4c", arch="aarch64", mcpu="cortex-a72", isa="neon", cores=4)
    assert nearest_class(spec, tmp_path) is None  # other architectures never apply
    write_class(tmp_path / "b", "x86_64-znver4-avx512-2c", mcpu="znver4", isa="avx512")
    assert nearest_class(spec, tmp_path)[0]["key"] == "x86_64-znver4-avx512-2c"
    write_class(tmp_path / "c", "x86_64-znver3-avx2-16c", mcpu="znver3", isa="avx2", cores=16)
    assert nearest_class(spec, tmp_path)[0]["key"] == "x86_64-znver3-avx2-16c"  # same ISA beats same cores
    write_class(tmp_path / "d", "x86_64-znver3-avx2-2c", mcpu="znver3", isa="avx2", cores=2)
    assert nearest_class(spec, tmp_path)[0]["key"] == "x86_64-znver3-avx2-2c"
    write_class(tmp_path / "e", "x86_64-haswell-avx2-2c", mcpu="haswell", isa="avx2", cores=2)
    assert nearest_class(spec, tmp_path)[0]["key"] == "x86_64-znver3-avx2-2c"  # its own class is not "nearest"
    assert {c["key"] for c, _ in list_classes(tmp_path)} >= {"x86_64-haswell-avx2-2c", "aarch64-cortex-a72-neon-4c"}
    assert class_distance(spec.machine_class(), spec.machine_class()) == 0


@pytest.mark.unit
def test_other_mcpus_of_the_same_vendor_are_nearer_and_ties_are_all_warm_sources(tmp_path):
    """An Intel CPU whose mcpu has no log is nearer Intel classes than AMD ones of the same ISA;
    the Intel classes tie, and the warm start measures the schedules of every tied class."""
    from tvmnet.core.targets import load_target
    from tvmnet.tune.classes import class_distance, cpu_vendor, nearest_class, nearest_tied_classes

    spec = load_target('{"kind": "llvm", "mcpu": "rocketlake", "num-cores": 2}')
    assert spec.machine_class()["isa"] == "avx512" and cpu_vendor(spec.machine_class()) == "intel"
    write_class(tmp_path / "a", "x86_64-znver4-avx512-2c", mcpu="znver4", isa="avx512")
    assert [c["key"] for c, _ in nearest_tied_classes(spec, tmp_path)] == ["x86_64-znver4-avx512-2c"]
    write_class(tmp_path / "b", "x86_64-emeraldrapids-avx512-2c", mcpu="emeraldrapids", isa="avx512")
    write_class(tmp_path / "c", "x86_64-cascadelake-avx512-2c", mcpu="cascadelake", isa="avx512")
    write_class(tmp_path / "d", "x86_64-skylake-avx2-2c", mcpu="skylake", isa="avx2")  # ISA still first
    write_class(tmp_path / "e", "x86_64-icelake-server-avx512-16c", mcpu="icelake-server", isa="avx512", cores=16)
    assert nearest_class(spec, tmp_path)[0]["key"] == "x86_64-cascadelake-avx512-2c"
    assert [c["key"] for c, _ in nearest_tied_classes(spec, tmp_path)] == [
        "x86_64-cascadelake-avx512-2c",
        "x86_64-emeraldrapids-avx512-2c",
    ]
    amd = {"arch": "x86_64", "mcpu": "znver4", "isa": "avx512", "cores": 2}
    assert class_distance(spec.machine_class(), amd) == class_distance(amd, spec.machine_class()) == 5
    assert cpu_vendor({"arch": "aarch64", "mcpu": "cortex-a72"}) == "aarch64"
    assert cpu_vendor({"arch": "x86_64", "mcpu": "generic"}) == "generic"


@pytest.mark.unit
def test_transfer_class_is_another_cpu_architecture_closest_in_vector_width_then_cores(tmp_path):
    """Only when no class of the same architecture exists does compile replay another
    architecture's records (the same TIR kernels): the one nearest in vector width, then cores."""
    from tvmnet.core.targets import load_target
    from tvmnet.tune.classes import transfer_class, transfer_classes

    pi4 = load_target("rpi4")  # aarch64, NEON (128-bit), 4 cores
    assert transfer_class(pi4, tmp_path) is None
    write_class(tmp_path / "z4", "x86_64-znver4-avx512-2c", mcpu="znver4", isa="avx512")
    assert transfer_class(pi4, tmp_path)[0]["key"] == "x86_64-znver4-avx512-2c"
    write_class(tmp_path / "z3", "x86_64-znver3-avx2-16c", mcpu="znver3", isa="avx2", cores=16)
    assert transfer_class(pi4, tmp_path)[0]["key"] == "x86_64-znver3-avx2-16c"  # 256-bit is nearer 128 than 512
    write_class(tmp_path / "hw", "x86_64-haswell-avx2-4c", mcpu="haswell", isa="avx2", cores=4)
    assert transfer_class(pi4, tmp_path)[0]["key"] == "x86_64-haswell-avx2-4c"  # then the core count
    write_class(tmp_path / "gpu", "cuda-sm_90", arch="cuda", mcpu="sm_90", isa="sm_90", cores=None)
    assert transfer_class(pi4, tmp_path)[0]["key"] == "x86_64-haswell-avx2-4c"  # never a GPU's
    assert transfer_class(load_target("cuda"), tmp_path) is None
    assert [c["key"] for c, _ in transfer_classes(pi4, tmp_path)] == [
        "x86_64-haswell-avx2-4c",
        "x86_64-znver3-avx2-16c",
        "x86_64-znver4-avx512-2c",
    ]  # the rest, in order


@pytest.mark.unit
def test_machine_class_of_presets():
    from tvmnet.core.targets import load_target

    assert load_target("rpi4").machine_class()["key"] == "aarch64-cortex-a72-neon-4c"
    assert load_target("rpi5").machine_class()["key"] == "aarch64-cortex-a76-neon-dotprod-4c"
    assert load_target("x86-avx2").machine_class()["isa"] == "avx2"
    assert load_target("x86-avx512").machine_class()["isa"] == "avx512"
    assert load_target("x86").machine_class()["key"] == host_class()


@pytest.fixture(scope="module")
def host_log(tuned):
    """The tiny real database of this machine's class (the GEMM kernels of MobileNet 0.25-32)."""
    db = tuned[0] / host_class()
    assert len(records(db)) >= 5 and json.loads((db / "class.json").read_text())["key"] == host_class()
    return db


@pytest.mark.tune
def test_compile_applies_the_exact_class(host_log, tmp_path):
    root = tmp_path / "logs"
    shutil.copytree(host_log, root / host_class())
    out = tmp_path / "o"
    tun, line = compile_with_logs(root, out)
    assert tun["match"] == "exact" and tun["class"] == tun["this_class"] == host_class()
    assert tun["kernels_by_source"] == {host_class(): tun["kernels_tuned"]} and tun["kernels_tuned"] >= 5
    assert host_class() in line  # not every kernel is tuned: it says so
    assert run_cli("validate", out).returncode == 0


@pytest.mark.tune
def test_compile_falls_back_to_the_nearest_class_and_names_the_fix(host_log, tmp_path):
    root = tmp_path / "logs"
    relabel(host_log, root / "x86_64-othercpu-avx2-2c", "x86_64-othercpu-avx2-2c", mcpu="othercpu")
    write_arm_class(root)
    out = tmp_path / "o"
    tun, line = compile_with_logs(root, out)
    assert tun["match"] == "nearest" and tun["class"] == "x86_64-othercpu-avx2-2c" and tun["kernels_tuned"] >= 5
    assert host_class() in line and "x86_64-othercpu-avx2-2c" in line and "aarch64-cortex-a72-neon-4c" in line
    assert "tvmnet tune --target x86 --alpha 0.25 --resolution 32 --trials 2000" in line
    assert run_cli("validate", out).returncode == 0


@pytest.mark.tune
@pytest.mark.slow  # extended run: ~45 s of timing (kept out of the default run's 15 minutes)
def test_a_stale_exact_class_against_a_current_near_class_is_timed_and_the_faster_applied(host_log, tmp_path):
    """Issue 30: this machine's class holds only records of an older pipeline generation (NCHW, as
    Zen 4's log did), a near class holds the current one's (NHWC). Which is faster is unknown, so
    compile builds both, times them in turn here, applies the faster and says so."""
    from conftest import TINY_TUNE

    root = tmp_path / "logs"
    res = run_cli(
        "tune", *TINY_TUNE, "--layout", "NCHW", "--kernels", "matmul", "--trials", "24", "--per-task", "2",
        "--log-dir", root, "--no-warm-start",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    gens = json.loads((root / host_class() / "class.json").read_text())["generations"]
    assert list(gens) == ["NCHW: FoldBatchNorm + PointwiseToGemm"]  # the log records its generation
    relabel(host_log, root / "x86_64-othercpu-avx512-2c", "x86_64-othercpu-avx512-2c", mcpu="othercpu", isa="avx512")
    out = tmp_path / "o"
    tun, line = compile_with_logs(root, out)
    weighed = tun["layout_choice"]
    by_layout = {c["layout"]: c for c in weighed["candidates"]}
    assert set(by_layout) == {"NHWC", "NCHW"} and all(c["median_ms"] > 0 for c in by_layout.values())
    assert by_layout["NCHW"]["kernels_by_source"] == {host_class(): by_layout["NCHW"]["kernels_tuned"]}
    assert "x86_64-othercpu-avx512-2c" in by_layout["NHWC"]["kernels_by_source"]  # (a kernel the same in both layouts
    # comes from this class's log)
    faster = min(by_layout.values(), key=lambda c: c["ratio"])["layout"]
    meta = json.loads((out / "metadata.json").read_text())
    assert weighed["applied"] == meta["layout"] == faster
    assert "timed in turn" in weighed["how"] and f"layout {faster} applied (timed in turn" in line
    assert run_cli("validate", out).returncode == 0


@pytest.mark.tune
def test_a_kernel_the_nearest_class_lacks_comes_from_the_next_class_that_has_it(host_log, tmp_path):
    """A new class's log holds a few models: the kernels it lacks stay with the classes tuned for them."""
    root = tmp_path / "logs"
    isa = json.loads((host_log / "class.json").read_text())["isa"]  # near: this host's ISA; far: another one
    other = "avx2" if isa == "avx512" else "avx512"
    near_key, far_key = f"x86_64-othercpu-{isa}-2c", f"x86_64-farcpu-{other}-2c"
    near, far = root / near_key, root / far_key
    relabel(host_log, near, near_key, mcpu="othercpu", isa=isa)
    relabel(host_log, far, far_key, mcpu="farcpu", isa=other)
    lines = (host_log / "database_tuning_record.json").read_text().splitlines()
    first = json.loads(lines[0])[0]  # the near class keeps one kernel's records, the far one the rest
    (near / "database_tuning_record.json").write_text("\n".join(l for l in lines if json.loads(l)[0] == first) + "\n")
    (far / "database_tuning_record.json").write_text("\n".join(l for l in lines if json.loads(l)[0] != first) + "\n")
    out = tmp_path / "o"
    tun, line = compile_with_logs(root, out)
    by = tun["kernels_by_source"]
    assert tun["match"] == "nearest" and tun["class"] == near_key
    assert by[near_key] == 1 and by[far_key] >= 4, by
    assert tun["kernels_tuned"] == len({json.loads(l)[0] for l in lines})  # every tuned kernel, none lost
    assert far_key in line
    assert run_cli("validate", out).returncode == 0


@pytest.mark.e2e
@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~40 s
def test_compile_without_a_usable_class_says_naive(tmp_path):
    root = tmp_path / "logs"
    write_arm_class(root)  # another architecture's class, with no records to transfer
    tun, line = compile_with_logs(root, tmp_path / "o")
    assert tun["match"] is None and tun["kernels_tuned"] == 0
    assert "naive" in line and "tvmnet tune --target x86" in line


@pytest.mark.tune
@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~125 s
def test_warm_start_remeasures_another_class_records_never_copies_their_times(host_log, tmp_path):
    foreign_root, new_root = tmp_path / "shipped", tmp_path / "mine"
    other = foreign_root / "x86_64-othercpu-avx512-2c"
    relabel(host_log, other, "x86_64-othercpu-avx512-2c", mcpu="othercpu", isa="avx512")
    recs = records(other)
    fake = 123.0  # seconds: no kernel here takes that long
    with open(other / "database_tuning_record.json", "w") as f:
        for wl, rec in recs:
            rec[1] = [fake] * len(rec[1])
            f.write(json.dumps([wl, rec]) + "\n")
    before = (other / "database_tuning_record.json").read_text()
    # a second class at the same distance with the same schedules: both are warm sources, and a
    # schedule the first one gave is not measured twice
    relabel(
        other, foreign_root / "x86_64-thirdcpu-avx512-2c", "x86_64-thirdcpu-avx512-2c", mcpu="thirdcpu", isa="avx512"
    )
    kernels = len({wl for wl, _ in recs})  # --warm-top-k 1: one schedule per kernel
    res = run_cli(
        "tune",
        "--target",
        "x86",
        *SMALL,
        "--population",
        "16",
        "--no-progress",
        "--kernels",
        "matmul",
        "--trials",
        str(kernels),
        "--per-task",
        "4",
        "--warm-top-k",
        "1",
        "--log-dir",
        new_root,
        env={"TVMNET_TUNING_LOGS": str(foreign_root)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        f"{kernels} of them schedules of classes x86_64-othercpu-avx512-2c, x86_64-thirdcpu-avx512-2c re-measured here"
    ) in res.stdout
    mine = records(new_root / host_class())
    assert len(mine) == kernels
    assert all(0 < float(s) < 1.0 for _, rec in mine for s in rec[1])  # measured here
    theirs = {json.dumps(r[0]) for _, r in recs}
    assert all(json.dumps(r[0]) in theirs for _, r in mine)  # their schedules, our times
    assert (other / "database_tuning_record.json").read_text() == before  # the source is only read


@pytest.mark.unit
@pytest.mark.parametrize(
    "nhwc,nchw,requested,expected,calls",
    [
        ({"own": 1.0}, {"own": 1.0}, None, "NHWC", 1),  # the default layout fully tuned here: no second look
        # issue 30: a stale log of this class (NCHW, tuned before NHWC existed) no longer wins over the
        # current generation from a near class; untimed (this rule test), the current generation wins
        ({"near": 1.0}, {"own": 1.0}, None, "NHWC", 2),
        ({"own": 0.5}, {"near": 1.0}, None, "NCHW", 2),  # untimed, naive kernels lose: the other layout covers them
        ({}, {}, None, "NHWC", 2),  # nothing anywhere: the default
        ({}, {"own": 1.0}, "NHWC", "NHWC", 1),  # --layout is obeyed
    ],
)
def test_compile_picks_the_layout_the_logs_cover(monkeypatch, nhwc, nchw, requested, expected, calls):
    """Records are per layout: with no --layout, compile lowers in the target's default (NHWC on
    CPUs: the current generation) and looks at the other layout only when the logs cover the
    default's kernels less than fully from this machine's own class. Untimed, the current
    generation wins unless it leaves kernels naive that the other layout's logs cover. (The rule
    only: lowering and the log lookup are stand-ins here, and no input is given, so nothing is
    timed; the real ones, and the timing, run in the compile tests.)"""
    import tvmnet.tune.classes as logs
    from tvmnet.build.choose import lower_and_choose_logs as _lower_and_choose_logs
    from tvmnet.build.compiler import CompileOptions
    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.passes import pipeline

    spec = load_target("x86")
    mine = spec.machine_class()["key"]
    lowered = []

    def fake_lower(mod, spec_, gemm=True, layout=None):
        lowered.append(layout)
        return f"module in {layout}"

    def fake_choose_logs(spec_, tuning_log, tasks):
        cover = {"NHWC": nhwc, "NCHW": nchw}[tasks[0]]
        n = 20
        by = {}
        if cover.get("own"):
            by[mine] = int(cover["own"] * n)
        if cover.get("near"):
            by["x86_64-other-avx2-2c"] = int(cover["near"] * n)
        return logs.LogChoice(None, mine, "exact" if by else None, by_source=by, kernels_total=n)

    monkeypatch.setattr(pipeline, "lower_to_tir", fake_lower)
    monkeypatch.setattr(pipeline, "extract_tasks", lambda mod, spec_: [mod.split()[-1]])
    monkeypatch.setattr(logs, "choose_logs", fake_choose_logs)
    opts = CompileOptions(ModelConfig(0.25, 32), spec, "unused", layout=requested)
    layout, mod, choice = _lower_and_choose_logs("the model", opts)
    assert (layout, len(lowered)) == (expected, calls)
    assert lowered[0] == (requested or "NHWC") and mod == f"module in {expected}"


@pytest.mark.tune
@pytest.mark.slow  # extended run: ~90 s
def test_warm_start_replays_the_same_layers_of_another_model_tuned_on_this_class(host_log, tmp_path):
    """A model the class has no record of (0.25-64) starts from the schedules of the model it
    has (0.25-32): the same kind of kernel, nearest shapes, replayed and measured here."""
    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.tune.logs import kernel_signature
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks

    root = tmp_path / "mine"
    shutil.copytree(host_log, root / host_class())
    before = records(root / host_class())
    theirs = {json.dumps(r[0]) for _, r in before}
    _, tasks = prepare_tasks(TuneOptions(model=ModelConfig(alpha=0.25, resolution=64), target=load_target("x86")))
    gemms = [t for t in tasks if "matmul" in t.task_name]
    kinds = {kernel_signature(t.dispatched[0]) for t in tasks}
    assert len(kinds) >= 4  # GEMM, fc, depthwise, stem, mean...: kinds are told apart
    res = run_cli(
        "tune",
        "--target",
        "x86",
        "--alpha",
        "0.25",
        "--resolution",
        "64",
        "--population",
        "16",
        "--no-progress",
        "--kernels",
        "matmul",
        "--trials",
        str(len(gemms)),
        "--warm-top-k",
        "1",
        "--no-seeds",
        "--log-dir",
        root,
        env={"TVMNET_TUNING_LOGS": str(tmp_path / "none")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "warm start from this class's own log" in res.stderr
    n = int(re.search(r"\((\d+) of them other models' schedules from this class's log", res.stdout).group(1))
    assert len(gemms) // 2 <= n <= len(gemms)  # a schedule replays unless a tile does not fit the shape
    replayed = [r for _, r in records(root / host_class())[len(before) :] if json.dumps(r[0]) in theirs]
    assert len(replayed) == n  # their schedules ...
    assert all(0 < float(s) < 1.0 for r in replayed for s in r[1])  # ... timed here on the new shapes
