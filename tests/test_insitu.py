"""Kernels timed in place (tvmnet/insitu/) and `tvmnet refine`'s picks applied by compile."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import host_class, run_cli

pytestmark = pytest.mark.e2e


def test_replay_runs_the_models_own_kernels_on_its_own_tensors(x86_small):
    from tvmnet.build.artifact import load_artifact
    from tvmnet.insitu.replay import Replay, vm_name
    from tvmnet.run.runner import open_local

    art = load_artifact(x86_small)
    rp = Replay(art)
    names = rp.names()
    assert len(rp.calls) >= 20 and any(n.startswith("fused_conv2d") for n in names)
    assert vm_name("no_such_kernel", names) is None and vm_name(names[0], names) == names[0]

    # the replay computes the model: its last kernel's output is the VM's output for that input
    x = np.random.default_rng(0).standard_normal(art.input_shape).astype(np.float32)
    want = open_local(art).run(x)
    rp.run()
    got = rp.calls[-1].args[-1].numpy().reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    in_place, alone = rp.in_place_us(runs=5), rp.alone_us(runs=5)
    assert set(in_place) == set(alone) == set(names)
    assert all(v > 0 for v in in_place.values()) and all(v > 0 for v in alone.values())
    # the kernels timed in place add up to about the VM's run (the VM adds only its interpreter)
    e2e_us = 1e3 * rp.vm_ms(number=3, repeat=3)
    assert 0.3 * e2e_us < sum(in_place.values()) < 1.5 * e2e_us

    # a candidate: the kernel's own function on its own tensors, timed in place
    name = names[1]
    func = next(c.func for c in rp.calls if c.name == name)
    assert rp.candidate_us(name, func, lambda a: a, runs=3) > 0
    with pytest.raises(KeyError):
        rp.candidate_us("no_such_kernel", func, lambda a: a, runs=1)


def test_compile_prefers_the_in_situ_pick_over_the_logs_best(tuned, tmp_path):
    """A record in <class>/in_situ/ (what refine writes) wins over the main log's best for that
    kernel, even when its time is worse, and compile's log line says so."""
    from tvmnet.tune.logs import copy_record, open_database, wl_key

    logs, _ = tuned
    root = tmp_path / "logs"
    shutil.copytree(logs, root)
    main = root / host_class()
    db = open_database(main)
    recs = list(db.get_all_tuning_records())
    by_wl = {}
    for r in recs:
        by_wl.setdefault(wl_key(r.workload), []).append(r)
    # a kernel with two records: put its slower one in in_situ/
    slow = None
    for group in by_wl.values():
        if len(group) >= 2:
            group.sort(key=lambda r: sum(float(s) for s in r.run_secs))
            slow = group[-1]
            break
    if slow is None:
        slow = max(recs, key=lambda r: sum(float(s) for s in r.run_secs))
    picks = open_database(main / "in_situ", create=True)
    copy_record(picks, slow)
    from tvmnet import ModelConfig, load_target
    from tvmnet.build.compiler import CompileOptions, _describe_logs
    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline
    from tvmnet.passes.pipeline import extract_tasks
    from tvmnet.tune.classes import choose_logs

    spec = load_target("x86")
    model = ModelConfig(0.25, 32)
    mod, *_ = import_model(model)
    tasks = extract_tasks(pipeline.lower_to_tir(mod, spec), spec)
    choice = choose_logs(spec, main, tasks)
    assert choice.in_situ == 1 and choice.metadata()["kernels_in_situ"] == 1
    task = next(t for t in tasks if wl_key(picks.commit_workload(t.dispatched[0])) == wl_key(slow.workload))
    chosen = choice.database.query_tuning_record(task.dispatched[0], spec.tvm_target(), task.task_name)
    assert str(chosen.trace) == str(slow.trace)
    note = _describe_logs(
        choice, len(tasks), CompileOptions(model=model, target=spec, output=tmp_path, tuning_log=main)
    )
    assert "1 of them picked in place by `tvmnet refine`" in note


@pytest.mark.slow
def test_refine_times_candidates_in_place_and_compile_applies_its_picks(tuned, tmp_path):
    logs, _ = tuned
    root = tmp_path / "logs"
    shutil.copytree(logs, root)
    res = run_cli(
        "refine",
        "--target",
        "x86",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "--kernels",
        "fused_matmul",
        "--trials",
        "0",
        "--top",
        "4",
        "--log-dir",
        root,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refine done" in res.stdout and "kernels got a schedule picked in place" in res.stdout
    picked = int(res.stdout.split("refine done")[1].split(": ")[1].split(" of ")[0])
    if picked:
        assert (root / host_class() / "in_situ" / "database_tuning_record.json").stat().st_size > 0
    out = tmp_path / "art"
    res = run_cli(
        "compile",
        "--target",
        "x86",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "-o",
        out,
        "--tuning-log",
        root / host_class(),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "metadata.json").read_text())["tuning"]["kernels_in_situ"] == picked
    assert run_cli("validate", out).returncode == 0


def test_refine_refuses_a_target_it_cannot_run(tmp_path):
    res = run_cli("refine", "--target", "rpi4", "--alpha", "0.5")
    assert res.returncode != 0
    assert "refine times kernels inside the model on this machine" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_new_pick_replaces_the_kernels_older_picks(tuned, tmp_path):
    """drop_kernel_records (refine runs it before committing a pick) removes that kernel's
    records only; the others stay and the database still loads. Without it an older pick timed
    under other conditions (a quieter machine: a lower time) would keep winning."""
    from tvmnet.tune.logs import copy_record, drop_kernel_records, open_database, wl_key

    logs, _ = tuned
    recs = list(open_database(logs / host_class()).get_all_tuning_records())
    kernels = {}
    for r in recs:
        kernels.setdefault(wl_key(r.workload), []).append(r)
    assert len(kernels) >= 2
    (k1, group1), (k2, group2) = list(kernels.items())[:2]
    picks_dir = tmp_path / "in_situ"
    picks = open_database(picks_dir, create=True)
    for r in group1[:2] + group2[:1]:
        copy_record(picks, r)
    n1 = len(group1[:2])
    assert drop_kernel_records(picks_dir, group1[0].workload.mod) == n1
    left = open_database(picks_dir).get_all_tuning_records()
    assert [wl_key(r.workload) for r in left] == [k2]
    assert drop_kernel_records(picks_dir, group1[0].workload.mod) == 0  # nothing left to drop
    assert not list(tmp_path.glob(".in_situ.*"))  # no staging left behind


@pytest.mark.slow  # ~100 s on 2 cores (a refine of one kernel, two compiles)
def test_a_packed_gemm_seed_refine_can_pick_compiles_and_matches_pytorch(tuned, tmp_path):
    """refine's candidates include our register-blocked GEMM micro-kernels with the weights
    packed (``tune.seeds.packed_seeds``); one committed as refine commits a pick (its trace only, in
    in_situ/) is what compile applies to that kernel, and the model still matches PyTorch."""
    from tvm.s_tir import meta_schedule as ms

    from tvmnet import ModelConfig, load_target
    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline
    from tvmnet.passes.pipeline import extract_tasks
    from tvmnet.tune.logs import open_database
    from tvmnet.tune.seeds import packed_seeds

    logs, _ = tuned
    root = tmp_path / "logs"
    shutil.copytree(logs, root)
    spec = load_target("x86")
    mod, *_ = import_model(ModelConfig(0.25, 32))
    tasks = extract_tasks(pipeline.lower_to_tir(mod, spec), spec)
    gemm, seeds = next(
        (t, s)
        for t in tasks
        if "matmul" in t.task_name
        for s in [packed_seeds(t, tmp_path / "ctx", spec.vector_isa())]
        if s
    )
    # the weights are packed: the candidate's weight argument has another shape than the kernel's
    fmod = gemm.dispatched[0]
    plain = [tuple(a.as_json()[2]) for a in ms.arg_info.ArgInfo.from_entry_func(fmod, remove_preproc=True)]
    packed = [tuple(a.as_json()[2]) for a in ms.arg_info.ArgInfo.from_entry_func(seeds[-1].mod, remove_preproc=True)]
    assert plain[1] != packed[1] and plain[0] == packed[0]
    picks = open_database(root / host_class() / "in_situ", create=True)
    picks.commit_tuning_record(
        ms.database.TuningRecord(
            seeds[-1].trace,
            picks.commit_workload(fmod),
            [1e-6],
            spec.tvm_target(),
            ms.arg_info.ArgInfo.from_entry_func(seeds[-1].mod, remove_preproc=True),
        )
    )
    out = tmp_path / "art"
    res = run_cli(
        "compile",
        "--target",
        "x86",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "-o",
        out,
        "--tuning-log",
        root / host_class(),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "metadata.json").read_text())["tuning"]["kernels_in_situ"] == 1
    res = run_cli("validate", out)
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout[-2000:]


def test_refine_builds_gemm_candidates_with_the_compiled_kernels_prefetches(tmp_path):
    """The kernel refine times a candidate against is compiled with PrefetchWeights' strip-ahead
    prefetches; a candidate built bare had none and lost in place (the 7x7x512->1024 GEMM's own
    schedule rebuilt as a candidate: 402 us against 318 compiled, on an AVX-512 Xeon). So each
    GEMM candidate gets the same prefetches of its packed weights, and computes the same numbers."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.passes.weight_prefetch import MIN_BYTES, as_compiled, prefetched_kernel
    from tvmnet.tune.builder import make_builder
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks
    from tvmnet.tune.seeds import gemm_shape, packed_seeds

    spec = load_target("x86")
    _, tasks = prepare_tasks(TuneOptions(model=ModelConfig(0.25, 64), target=spec))
    gemms = [(t, gemm_shape(t.dispatched[0])) for t in tasks if prefetched_kernel(spec.arch, t.task_name)]
    big = max((p for p in gemms if p[1]), key=lambda p: p[1][1] * p[1][2])  # 256 x 256 weights: 256 KB
    small = min((p for p in gemms if p[1]), key=lambda p: p[1][1] * p[1][2])
    assert big[1][1] * big[1][2] * 4 >= MIN_BYTES > small[1][1] * small[1][2] * 4
    bare = packed_seeds(big[0], tmp_path / "big", spec.vector_isa())[0].mod
    pf = as_compiled(bare)
    assert "T.prefetch(" in pf.script() and "T.prefetch(" not in bare.script()
    small_mod = packed_seeds(small[0], tmp_path / "small", spec.vector_isa())[0].mod
    assert as_compiled(small_mod) is small_mod  # too little to prefetch

    target = spec.tvm_target()
    built = make_builder(spec).build([ms.builder.BuilderInput(m, target) for m in (bare, pf)])
    assert not any(b.error_msg for b in built), [b.error_msg for b in built]
    shapes = [a.as_json()[2] for a in ms.arg_info.ArgInfo.from_entry_func(pf, remove_preproc=True)]
    assert shapes == [a.as_json()[2] for a in ms.arg_info.ArgInfo.from_entry_func(bare, remove_preproc=True)]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal([int(d) for d in s]).astype("float32") for s in shapes[:-1]]
    outs = []
    for b in built:
        rt = tvm.runtime.load_module(b.artifact_path)
        out = tvm.runtime.tensor(np.zeros([int(d) for d in shapes[-1]], "float32"))
        rt[rt.entry_name or "main"](*[tvm.runtime.tensor(x) for x in inputs], out)
        outs.append(out.numpy())
    assert np.abs(outs[0]).max() > 0
    np.testing.assert_array_equal(outs[0], outs[1])  # a prefetch changes no number
