"""Deploy, validate and tune over TVM RPC against emulated Raspberry Pi 4 boards."""

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import free_port, host_class, run_cli

from tvmnet.run import emulator

pytestmark = pytest.mark.device


@pytest.fixture(scope="module")
def board(emulated_rpi4):
    host, port = emulated_rpi4
    return f"{host}:{port}"


@pytest.fixture(scope="module")
def rpi4_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpi") / "mnet-rpi4"
    res = run_cli("compile", "--target", "rpi4", "--alpha", "0.25", "--resolution", "64", "-o", out)
    assert res.returncode == 0, res.stderr
    return out


def test_deploy_to_emulated_rpi4(board, rpi4_artifact):
    res = run_cli("deploy", rpi4_artifact, "--rpc", board, "--samples", "3", "--runs", "3")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout and "(aarch64)" in res.stdout
    assert "top-1 agreement 3/3" in res.stdout
    assert "device timing" in res.stdout and "median" in res.stdout


def test_int8_on_the_emulated_pi4_matches_the_quantized_reference(board, tmp_path):
    """tvmnet's ARM int8 GEMM (passes/arm_kernel.py) on the emulated Cortex-A72: the same integers
    as ONNX Runtime's kernels on the quantized model the artifact carries."""
    from test_arm_int8 import compile_and_deploy

    meta = compile_and_deploy("rpi4", board, "0.25", "64", tmp_path / "q")
    # the first layer (K = 8) on smlal, the rest (K a multiple of 16) on smull pairs
    assert "PointwiseToArm(smlal + smull)" in meta["passes"] and "1 on smlal" in meta["quantization"]["kernels"]


def test_another_architectures_schedules_apply_and_validate_on_the_board(board, tuned, tmp_path):
    """No aarch64 log anywhere: compile for the Pi replays the x86 class's records (the kernels
    are the same TIR on every CPU), says so, and the build still matches PyTorch on the board."""
    import shutil

    root = tmp_path / "logs"
    shutil.copytree(tuned[0] / host_class(), root / host_class())
    out = tmp_path / "rpi4-transfer"
    res = run_cli(
        "compile",
        "--target",
        "rpi4",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "-o",
        out,
        env={"TVMNET_TUNING_LOGS": str(root)},
    )
    assert res.returncode == 0, res.stderr
    tun = json.loads((out / "metadata.json").read_text())["tuning"]
    assert (
        tun["match"] == "transfer"
        and tun["class"] == host_class()
        and tun["this_class"] == "aarch64-cortex-a72-neon-4c"
    )
    assert tun["kernels_tuned"] >= 5 and "another architecture" in tun["note"]
    res = run_cli("deploy", out, "--rpc", board, "--samples", "2", "--runs", "2")
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr


def test_validate_over_rpc(board, rpi4_artifact):
    res = run_cli("validate", rpi4_artifact, "--rpc", board, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(res.stdout)
    assert rep["ok"] and rep["max_abs"] < 1e-4 and rep["input_sensitivity"] > 1e-2
    assert "aarch64" in rep["where"]


def test_wrong_architecture_refused_before_upload(board, x86_small):
    res = run_cli("deploy", x86_small, "--rpc", board)
    assert res.returncode == 5
    assert "x86_64" in res.stderr and "aarch64" in res.stderr and "nothing was uploaded" in res.stderr


def test_unreachable_server_fails_fast(rpi4_artifact):
    port = free_port()  # nothing listens there
    t0 = time.time()
    res = run_cli("deploy", rpi4_artifact, "--rpc", f"127.0.0.1:{port}")
    assert res.returncode == 8 and f"127.0.0.1:{port}" in res.stderr
    t0 = time.time()
    res = run_cli("validate", rpi4_artifact, "--rpc", "10.255.255.1:9090", "--connect-timeout", "3")
    assert res.returncode == 8 and "10.255.255.1:9090" in res.stderr
    assert time.time() - t0 < 60  # bounded: import time + 3 s, never a hang


def test_silent_server_times_out(rpi4_artifact):
    """A port that accepts but never speaks RPC: an error within the connect timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        t0 = time.time()
        res = run_cli("validate", rpi4_artifact, "--rpc", f"127.0.0.1:{port}", "--connect-timeout", "4")
        assert res.returncode == 8 and f"127.0.0.1:{port}" in res.stderr, res.stderr
        assert time.time() - t0 < 60
    finally:
        srv.close()


def test_device_dies_mid_session(rpi4_artifact):
    from tvmnet.build.artifact import load_artifact
    from tvmnet.core.endpoint import Endpoint
    from tvmnet.core.errors import DeviceError
    from tvmnet.run.rpc import open_remote
    from tvmnet.run.validate import seeded_inputs

    port = free_port()
    emulator.start("rpi4", host="127.0.0.1", port=port)
    art = load_artifact(rpi4_artifact)
    x = seeded_inputs(art.input_shape, 1)[0]
    try:
        with open_remote(art, Endpoint(rpc=f"127.0.0.1:{port}", timeout=20), say=lambda m: None) as sess:
            sess.run(x)
            emulator.stop("rpi4", port)
            with pytest.raises(DeviceError):
                sess.run(x)
    finally:
        emulator.stop("rpi4", port)


@pytest.fixture(scope="module")
def tracker_with_two_boards():
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-end",
            str(port + 1),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    tracker = f"127.0.0.1:{port}"
    ports = [free_port(), free_port()]
    for p in ports:
        emulator.start("rpi4", host="127.0.0.1", port=p, tracker=tracker, key="rpi4-ci")
    yield tracker
    for p in ports:
        emulator.stop("rpi4", p)
    proc.terminate()
    proc.wait(10)


RPI4_CLASS = "aarch64-cortex-a72-neon-4c"  # the database directory of tunes for the rpi4 preset


@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~200 s
def test_rpc_tuning_through_tracker_then_compile_applies(tracker_with_two_boards, tmp_path):
    logs = tmp_path / "logs"
    res = run_cli(
        "tune",
        "--target",
        "rpi4",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "--kernels",
        "matmul",
        "--trials",
        "6",
        "--per-task",
        "2",
        "--population",
        "16",
        "--no-progress",
        "--log-dir",
        logs,
        "--tracker",
        tracker_with_two_boards,
        "--key",
        "rpi4-ci",
    )
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert " 0 failed" in res.stdout
    recs = [l for l in (logs / RPI4_CLASS / "database_tuning_record.json").read_text().splitlines() if l.strip()]
    assert len(recs) >= 3
    out = tmp_path / "tuned-rpi4"
    res = run_cli(
        "compile",
        "--target",
        "rpi4",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "--tuning-log",
        logs / RPI4_CLASS,
        "-o",
        out,
    )
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["tuning"]["kernels_tuned"] >= 3
    res = run_cli("deploy", out, "--tracker", tracker_with_two_boards, "--key", "rpi4-ci", "--samples", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout


def test_tune_for_arm_without_board_is_refused():
    res = run_cli("tune", "--target", "rpi4", "--alpha", "0.25", "--resolution", "32", "--trials", "2")
    assert res.returncode == 2 and "--tracker" in res.stderr and "--estimate" in res.stderr


def test_bench_and_deploy_without_a_board_print_the_proxy_estimate_labelled_beside_published_figures(
    rpi4_artifact, tmp_path
):
    out = tmp_path / "est.json"
    res = run_cli("bench", rpi4_artifact, "--json", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ESTIMATED latency on rpi4" in res.stdout and "NOT a measurement" in res.stdout
    # issue 30: published figures only beside the same model (XNNPACK's is 1.0-224); none for 0.25-64
    assert "no published figure for MobileNet v1 0.25-64 fp32 on rpi4" in res.stdout and "XNNPACK" not in res.stdout
    assert "CALIBRATED estimate" in res.stdout  # this machine's factors, fitted on its own x86 build
    est = json.loads(out.read_text())
    assert est["calibrated_ms"] > est["total_ms"] > 0 and set(est["calibrated_by_kind"]) == set(est["by_kind"])
    assert est["board"] == "rpi4" and est["kernels"] == len(est["rows"]) >= 10 and est["total_ms"] > 0
    assert abs(sum(est["by_kind"].values()) - est["total_ms"]) < 1e-6
    assert (rpi4_artifact / "estimate.json").is_file()
    res = run_cli("deploy", rpi4_artifact)  # no board: the estimate again (cached), and nothing deployed
    assert res.returncode == 2 and "nothing deployed" in res.stderr and "--rpc HOST:PORT" in res.stderr
    assert "ESTIMATED latency on rpi4" in res.stdout and "[1/" not in res.stderr


@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~150 s
def test_estimate_tune_without_a_board_is_applied_before_transfer_and_validates_on_the_board(board, tuned, tmp_path):
    """`tune --estimate`: the GEMM kernels tuned for the Pi 4 by the cost proxy (nothing run),
    into tuning_logs/estimated/<class>/; compile applies them first, the x86 class's records for
    the rest, and the build matches PyTorch on the (emulated) board. A measured log of the class
    wins over the estimated one."""
    import shutil

    root = tmp_path / "logs"
    shutil.copytree(tuned[0] / host_class(), root / host_class())
    env = {"TVMNET_TUNING_LOGS": str(root)}
    res = run_cli(
        "tune",
        "--target",
        "rpi4",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "--estimate",
        "--trials",
        "8",
        "--per-task",
        "2",
        "--population",
        "16",
        "--warm-top-k",
        "1",
        "--no-progress",
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert " 0 failed" in res.stdout and "scored by the cost proxy" in res.stderr
    assert "pointwise GEMM 0.86" in res.stderr  # why these kinds: the proxy's measured rank agreement
    est_dir = root / "estimated" / RPI4_CLASS
    info = json.loads((est_dir / "class.json").read_text())
    assert info["estimated"] is True and "cost proxy" in info["measured_on"] and info["key"] == RPI4_CLASS
    recs = [json.loads(l) for l in (est_dir / "database_tuning_record.json").read_text().splitlines() if l.strip()]
    assert len(recs) >= 5 and all(0 < float(s) < 1 for r in recs for s in r[1][1])  # estimated seconds
    assert not (root / RPI4_CLASS).exists()  # never mixed with measured logs

    out = tmp_path / "rpi4-estimated"
    res = run_cli("compile", "--target", "rpi4", "--alpha", "0.25", "--resolution", "32", "-o", out, env=env)
    assert res.returncode == 0, res.stderr
    tun = json.loads((out / "metadata.json").read_text())["tuning"]
    assert tun["match"].startswith("estimated"), tun  # then "+transfer" for the kernels it lacks
    assert tun["kernels_by_source"][f"{RPI4_CLASS} (estimated)"] >= 5 and "cost proxy" in tun["note"]
    res = run_cli("deploy", out, "--rpc", board, "--samples", "2", "--runs", "2")
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr

    shutil.copytree(est_dir, root / RPI4_CLASS)  # as if measured on a board: it wins
    (root / RPI4_CLASS / "class.json").write_text(json.dumps(dict(info, estimated=False, measured_on="a Pi 4")))
    res = run_cli("compile", "--target", "rpi4", "--alpha", "0.25", "--resolution", "32", "-o", tmp_path / "m", env=env)
    assert res.returncode == 0, res.stderr
    tun = json.loads((tmp_path / "m" / "metadata.json").read_text())["tuning"]
    assert tun["match"].startswith("exact"), tun
    assert f"{RPI4_CLASS} (estimated)" not in tun["kernels_by_source"] and tun["kernels_by_source"][RPI4_CLASS] >= 5
