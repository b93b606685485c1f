"""Our register-blocked GEMM micro-kernels (tvmnet/tune/seeds.py): they apply to exactly the
pointwise GEMM kernels, compute what the kernel computes, and the tune's seed phase
measures them into the database once."""

import json

import numpy as np
import pytest
from conftest import TINY_TUNE, host_class, run_cli


def lowered_tasks(alpha=0.25, resolution=32):
    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks

    spec = load_target("x86")
    return spec, prepare_tasks(TuneOptions(model=ModelConfig(alpha=alpha, resolution=resolution), target=spec))[1]


@pytest.mark.unit
def test_tile_grid_respects_shape_and_registers():
    from tvmnet.tune.seeds import ACC_REGS, LANES, PAD_WASTE, gemm_tiles

    for isa in ("avx512", "avx2", "neon"):
        tiles = gemm_tiles(196, 256, 256, isa)
        assert tiles, isa
        for mi, nj, kk in tiles:
            assert -196 % mi <= PAD_WASTE * 196 and 256 % nj == 0 and 256 % kk == 0
            assert nj % LANES[isa] == 0
            assert mi * nj // LANES[isa] <= ACC_REGS[isa]
    assert gemm_tiles(1, 1000, 512, "avx512") == []  # the classifier (one row) is left to the search
    # M = 49 (the 7x7 layers): the only dividing tile is 7 rows x 1 vector; the full 5 x 2-vector
    # block pads M to 50, and no tile pads by more than PAD_WASTE (6 rows: 54)
    assert {(mi, nj) for mi, nj, _ in gemm_tiles(49, 1024, 1024, "avx2")} == {(7, 8), (5, 16)}


@pytest.mark.e2e
def test_seeds_cover_the_gemms_and_compute_what_the_kernel_computes():
    import tvm

    from tvmnet.passes.pipeline import kernel_kind
    from tvmnet.tune.seeds import gemm_shape, seed_schedules_for

    spec, tasks = lowered_tasks(0.25, 64)
    target, dev = spec.tvm_target(), tvm.cpu()
    kinds = {t.task_name: kernel_kind(t.task_name, t.dispatched[0]) for t in tasks}
    covered = {t.task_name: gemm_shape(t.dispatched[0]) is not None for t in tasks}
    for name, kind in kinds.items():
        if kind == "fc":  # one row: nothing to block in registers (either answer is fine)
            continue
        want = kind == "pointwise GEMM"
        assert covered[name] == want, (name, kind, covered[name])
    checked = checked_padded = 0
    rng = np.random.default_rng(0)
    for task in tasks:
        mod = task.dispatched[0]
        seeds = seed_schedules_for(mod, spec.vector_isa())
        if not seeds:
            continue
        shapes = [[int(x) for x in p.shape] for p in mod["main"].params]
        args = [tvm.runtime.tensor(rng.standard_normal(s).astype("float32"), dev) for s in shapes[:-1]]

        def run(m):
            out = tvm.runtime.tensor(np.zeros(shapes[-1], "float32"), dev)  # noqa: B023 - called in this iteration
            tvm.tirx.build(m, target=target)["main"](*args, out)  # noqa: B023
            return out.numpy()

        want = run(mod)
        assert (want == 0).any() and (want > 0).any()  # the ReLU epilogue is exercised
        padded = [s for s in seeds if "pad_einsum" in str(s.trace)][:1]  # M padded to the row tile
        for sch in seeds[:3] + padded:
            np.testing.assert_allclose(run(sch.mod), want, rtol=1e-5, atol=1e-5)
            checked += 1
            checked_padded += sch in padded
    assert checked >= 6 and checked_padded >= 2


@pytest.mark.tune
@pytest.mark.slow
def test_seed_phase_measures_each_seed_once(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.tune.builder import make_builder
    from tvmnet.tune.logs import open_database
    from tvmnet.tune.measure import make_runner
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.seeds import seed_schedules, seed_schedules_for

    spec, tasks = lowered_tasks()
    spec.use_threads()
    task = min(
        (t for t in tasks if seed_schedules_for(t.dispatched[0], spec.vector_isa())),
        key=lambda t: len(seed_schedules_for(t.dispatched[0], spec.vector_isa())),
    )
    contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts([task], str(tmp_path / "work"))
    db = open_database(tmp_path / "db", create=True)
    builder, runner = make_builder(spec), make_runner(TuneOptions(model=None, target=spec, repeats=1, number=2))
    args = ([task], contexts, db, builder, runner, spec.tvm_target(), spec.vector_isa())
    n_seeds = len(seed_schedules_for(task.dispatched[0], spec.vector_isa()))
    first = seed_schedules(*args)
    assert n_seeds <= first <= 2 * n_seeds  # each seed as written, and packed where the postprocs apply
    recs = db.get_top_k(db.commit_workload(task.dispatched[0]), 1 << 30)
    assert len(recs) == first and all(r.run_secs and float(r.run_secs[0]) > 0 for r in recs)
    assert seed_schedules(*args) == 0  # a rerun measures nothing again
    assert seed_schedules(*args[:-1], spec.vector_isa(), limit=0) == 0


@pytest.mark.tune
@pytest.mark.slow
def test_real_tune_starts_from_the_seeds(tmp_path):
    spec, tasks = lowered_tasks()
    name = next(t.task_name for t in tasks if t.task_name.startswith("fused_matmul2_"))
    res = run_cli("tune", *TINY_TUNE, "--kernels", name, "--trials", "40", "--log-dir", tmp_path, "--no-warm-start")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "seeding: measuring our register-blocked micro-kernels" in res.stderr
    assert "of them our micro-kernels" in res.stdout
    lines = (tmp_path / host_class() / "database_tuning_record.json").read_text().splitlines()
    assert len(lines) >= 40 and all(json.loads(l)[1][1] for l in lines)
