"""MetaSchedule's runner on remote boards: candidates measured on the boards registered under
a tracker key (``tvmnet tune --tracker HOST:PORT --key KEY``)."""

from __future__ import annotations

from tvmnet.core.endpoint import Endpoint, parse_hostport, probe, with_deadline
from tvmnet.core.errors import DeviceError, UsageError


def _host_random_fill(arg) -> None:
    import numpy as np

    arg.copyfrom(np.random.uniform(-1, 1, size=[int(d) for d in arg.shape]).astype(str(arg.dtype)))


def alloc_argument_from_host(session, device, args_info, alloc_repeat):
    """MetaSchedule's argument allocation, filled from the host: a board with only the TVM
    runtime lacks ``tvm.contrib.random.random_fill_for_measure``, which the default uses."""
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    return alloc_argument_common(_host_random_fill, device, args_info, alloc_repeat)


def create_session_fail_fast(rpc_config):
    """MetaSchedule session factory that fails at once when no board with the key is
    registered (the default waits for one until each candidate's timeout, so a dead board
    costs ``timeout`` seconds per candidate)."""
    rpc_config.count_num_servers(allow_missing=False)
    # a board that dies after the count leaves the request pending for ever: bound it
    return with_deadline(
        rpc_config.connect_server,
        float(rpc_config.session_timeout_sec),
        f"a device with key {rpc_config.tracker_key!r}",
    )


def make_rpc_runner(cfg: Endpoint, evaluator, timeout: float):
    """MetaSchedule runner measuring on the boards registered under a tracker key."""
    from tvm.s_tir import meta_schedule as ms

    if not cfg.tracker:
        raise UsageError(
            "tuning over RPC needs a tracker: start `python -m tvm.exec.rpc_tracker`, register the "
            "boards with --tracker/--key, then pass --tracker HOST:PORT --key KEY"
        )
    host, port = parse_hostport(cfg.tracker, "--tracker")
    probe(host, port, cfg.timeout, "RPC tracker")
    rpc_config = ms.runner.RPCConfig(
        tracker_host=host,
        tracker_port=port,
        tracker_key=cfg.key,
        session_priority=1,
        session_timeout_sec=int(max(timeout, 10)),
    )
    if with_deadline(rpc_config.count_num_servers, cfg.timeout, f"RPC tracker {cfg.tracker}") == 0:
        raise DeviceError(
            f"no board is registered under key {cfg.key!r} at tracker {cfg.tracker}; start one with "
            f"`python -m tvm.exec.rpc_server --tracker {cfg.tracker} --key {cfg.key}` (or "
            f"`tvmnet emulator start --tracker {cfg.tracker} --key {cfg.key}`)"
        )
    return ms.runner.RPCRunner(
        rpc_config=rpc_config,
        evaluator_config=evaluator,
        max_workers=1,
        f_alloc_argument=alloc_argument_from_host,
        f_create_session=create_session_fail_fast,
    )
