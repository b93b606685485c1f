"""Tuning leaves MetaSchedule's logging as it found it (in one process: the tests, a Python user,
refine, sweep). MetaSchedule configures its loggers with dictConfig at every tune context, and its
`create_loggers` fails on a handler without a name (`'NoneType' object has no attribute
'format'`): CI's extended run once failed so in test_schedules after test_insitu."""

import io
import logging

import pytest

from tvmnet.core.config import ModelConfig
from tvmnet.core.targets import load_target
from tvmnet.tune.mslogging import PREFIX, logging_state


@pytest.mark.tune
def test_tuning_entry_points_leave_metaschedule_logging_as_they_found_it(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks, tune_model
    from tvmnet.tune.seeds import packed_seeds

    ms_log = logging.getLogger(PREFIX)
    stray = logging.StreamHandler(io.StringIO())  # a handler without a name, as any library may add one
    ms_log.addHandler(stray)
    try:
        before = logging_state()
        assert before[PREFIX][0][-1] is stray
        spec = load_target("x86")
        opts = TuneOptions(
            model=ModelConfig(0.25, 32),
            target=spec,
            trials=2,
            per_task=1,
            kernels="matmul",
            log_dir=tmp_path / "logs",
            warm_start=False,
            seeds=False,
            progress=False,
            population=16,
        )
        res = tune_model(opts, say=lambda msg: None)
        assert res.trials_run >= 1 and res.failed < res.trials_run
        assert logging_state() == before  # the same handlers (the stray one too), levels, propagation

        _, tasks = prepare_tasks(opts)
        gemm = next(t for t in tasks if packed_seeds(t, tmp_path / "ctx", spec.vector_isa()))
        assert logging_state() == before
    finally:
        ms_log.removeHandler(stray)

    # with no stray handler, MetaSchedule's own entry still works after ours, and leaves its loggers
    ms.relax_integration.extracted_tasks_to_tune_contexts([gemm], str(tmp_path / "work"))
    assert logging_state() != before and ms_log.handlers  # (what MetaSchedule leaves: its console and file handlers)
