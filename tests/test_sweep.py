"""`tvmnet sweep` / `tvmnet pick`: Pareto front, published accuracy, pick, plot, and one small
real sweep end to end (two published pairs at resolution 128, untuned kernels where the logs
have none)."""

import json
import struct
import time
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, host_class, run_cli

from tvmnet.core.errors import BudgetError, UsageError
from tvmnet.study import accuracy, frontier, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def one_line_error(res, *needles):
    assert res.returncode != 0
    lines = [l for l in res.stderr.splitlines() if l.strip() and not l.startswith("[tvmnet]")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tvmnet: error:") and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def row(alpha, res, ms, validated=True, target="x86"):
    """A hand-made sweep row (accuracy comes from the data file, as in a real sweep)."""
    return {
        "alpha": alpha,
        "resolution": res,
        "target": target,
        "median_ms": ms,
        "p90_ms": round(ms * 1.1, 4),
        "validated": validated,
        "mult_adds_m": 1.0,
        "params_m": 0.5,
        "kernels_tuned": 0,
        "kernels_total": 21,
        "kernels_by_source": {},
        "seed": 0,
        "device": "local: test",
        "measured_at": "2026-01-01T00:00:00+00:00",
        "validation": {"max_abs": 1e-5, "failures": [] if validated else ["outputs differ"]},
    }


def table():
    return [
        row(1.0, 224, 10.0),
        row(0.75, 224, 6.0),
        row(1.0, 128, 5.0),
        row(0.75, 160, 4.5),
        row(0.5, 224, 3.0),
        row(0.25, 128, 1.0),
        row(0.25, 32, 0.2),  # fastest of all, but no published figure
        row(0.5, 128, 0.9, validated=False),
    ]  # numerics failed


# ------------------------------------------------------------------------------------------- (a) Pareto


@pytest.mark.unit
def test_pareto_front_hand_made():
    pts = [
        (1.0, 50.0),  # 0 front
        (2.0, 60.0),  # 1 front
        (2.5, 55.0),  # 2 dominated by 1 (slower, less accurate)
        (2.0, 60.0),  # 3 identical to 1: both on the front
        (3.0, 60.0),  # 4 dominated by 1 (same accuracy, slower)
        (0.5, None),  # 5 no published figure: never on it
        (4.0, 70.0),  # 6 front
        (1.0, 45.0),
    ]  # 7 dominated by 0 (same latency, less accurate)
    assert frontier.pareto_front(pts) == [0, 1, 3, 6]
    assert frontier.pareto_front([]) == []
    assert frontier.pareto_front([(1.0, None)]) == []


@pytest.mark.unit
def test_front_of_table_leaves_out_unpublished_and_failed():
    rows = [frontier.annotate(r) for r in table()]
    front = [frontier.label(rows[i]["alpha"], rows[i]["resolution"]) for i in frontier.front_of(rows)]
    # 1.0-128 (5 ms, 65.2) is dominated by 0.75-160 (4.5 ms, 65.3); 0.25-32 and 0.5-128 are not eligible
    assert front == ["0.25-128", "0.5-224", "0.75-160", "0.75-224", "1.0-224"]


# ------------------------------------------------------------------------------------------- (b) accuracy

PAPER = {
    (1.0, 224): 70.6,
    (0.75, 224): 68.4,
    (0.5, 224): 63.7,
    (0.25, 224): 50.6,  # Table 6
    (1.0, 192): 69.1,
    (1.0, 160): 67.2,
    (1.0, 128): 64.4,
}  # Table 7
PAPER_MACS_PARAMS = {
    (1.0, 224): (569, 4.2),
    (0.75, 224): (325, 2.6),
    (0.5, 224): (149, 1.3),
    (0.25, 224): (41, 0.5),
    (1.0, 192): (418, 4.2),
    (1.0, 160): (290, 4.2),
    (1.0, 128): (186, 4.2),
}
TF = {
    1.0: {224: (70.9, 89.9), 192: (70.0, 89.2), 160: (68.0, 87.7), 128: (65.2, 85.8)},
    0.75: {224: (68.4, 88.2), 192: (67.2, 87.3), 160: (65.3, 86.0), 128: (62.1, 83.9)},
    0.5: {224: (63.3, 84.9), 192: (61.7, 83.6), 160: (59.1, 81.9), 128: (56.3, 79.4)},
    0.25: {224: (49.8, 74.2), 192: (47.7, 72.3), 160: (45.5, 70.3), 128: (41.5, 66.3)},
}


@pytest.mark.unit
def test_accuracy_paper_tables_6_and_7():
    paper = accuracy.table(accuracy.PAPER)
    assert {(p.alpha, p.resolution): p.top1 for p in paper} == PAPER
    assert {(p.alpha, p.resolution): (p.mult_adds_m, p.params_m) for p in paper} == PAPER_MACS_PARAMS
    assert all(p.top5 is None for p in paper)  # the paper gives top-1 only
    assert accuracy.lookup(0.5, 224, accuracy.PAPER).where == "Table 6"
    assert accuracy.lookup(1.0, 160, accuracy.PAPER).where == "Table 7"
    assert "arXiv:1704.04861" in accuracy.citation(accuracy.PAPER)


@pytest.mark.unit
def test_accuracy_tensorflow_table_all_16():
    tf = accuracy.table(accuracy.PRIMARY)
    assert len(tf) == 16
    for p in tf:
        assert (p.top1, p.top5) == TF[p.alpha][p.resolution], p
    assert accuracy.PRIMARY == "tf-slim"
    assert "mobilenet_v1.md" in accuracy.citation() and "2018_02_22" in accuracy.citation()
    both = accuracy.published(0.75, 224)
    assert set(both) == {"tf-slim", "paper"} and both["paper"].top1 == 68.4 and both["tf-slim"].top1 == 68.4
    assert accuracy.published(1.00, 128)["tf-slim"].top1 == 65.2  # float keys: 1.00 == 1.0


@pytest.mark.unit
@pytest.mark.parametrize("alpha,res", [(0.6, 224), (0.25, 96), (1.0, 32), (0.5, 256)])
def test_no_published_figure(alpha, res):
    assert accuracy.published(alpha, res) == {}
    assert accuracy.lookup(alpha, res) is None
    r = frontier.annotate(row(alpha, res, 1.0))
    assert r["top1"] is None and r["top1_source"] == "no published figure"
    assert "no published figure" in frontier.format_table([r], [], "t")


@pytest.mark.unit
def test_accuracy_file_is_package_data():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "data/*.json" in conf["tool"]["setuptools"]["package-data"]["tvmnet"]
    assert (ROOT / "tvmnet" / "data" / accuracy.DATA_FILE).is_file()
    assert any(d.startswith("matplotlib") for d in conf["project"]["dependencies"])


# ------------------------------------------------------------------------------------------- (c) pick


@pytest.mark.unit
def test_pick_most_accurate_within_budget_and_runner_up():
    p = frontier.pick(table(), 5.0)  # 5.0 is inclusive: 1.0-128 at exactly 5.0 ms counts
    assert (p.best["alpha"], p.best["resolution"]) == (0.75, 160)  # 65.3
    assert (p.runner_up["alpha"], p.runner_up["resolution"]) == (1.0, 128)  # 65.2
    assert p.within == 4 and p.considered == 6
    assert p.command == "tvmnet compile --target x86 --alpha 0.75 --resolution 160 -o build/mobilenet-0.75-160"
    text = "\n".join(p.lines())
    assert "65.3%" in text and "runner-up" in text and p.command in text
    big = frontier.pick(table(), 1e9, target="rpi4")
    assert (big.best["alpha"], big.best["resolution"], big.runner_up["alpha"]) == (1.0, 224, 0.75)
    assert big.command.startswith("tvmnet compile --target rpi4 --alpha 1.0 --resolution 224 ")


@pytest.mark.unit
def test_pick_never_takes_unpublished_or_failed_rows():
    p = frontier.pick(table(), 1.0)  # 0.25-32 (0.2 ms) and 0.5-128 (0.9 ms, failed) are within, not eligible
    assert (p.best["alpha"], p.best["resolution"]) == (0.25, 128) and p.runner_up is None


@pytest.mark.unit
def test_pick_tie_on_accuracy_takes_the_faster():
    rows = [row(0.5, 160, 3.0, target="a"), row(0.5, 160, 2.0, target="b"), row(0.25, 224, 1.0)]
    p = frontier.pick(rows, 10)
    assert p.best["median_ms"] == 2.0 and p.runner_up["median_ms"] == 3.0


@pytest.mark.unit
def test_pick_budget_too_small_names_the_fastest_pair():
    with pytest.raises(BudgetError) as e:
        frontier.pick(table(), 0.5)
    msg = str(e.value)
    assert "0.25-128" in msg and "1.000 ms" in msg and "0.5 ms" in msg  # not 0.25-32 (unpublished)
    assert "\n" not in msg and e.value.exit_code == 10
    with pytest.raises(UsageError, match="tvmnet sweep"):
        frontier.pick([row(0.25, 32, 0.2)], 10)  # nothing published at all
    with pytest.raises(UsageError, match="positive"):
        frontier.pick(table(), 0)


# ------------------------------------------------------------------------------------------- (d) plot


@pytest.mark.unit
def test_plot_is_png_and_draws_the_table(tmp_path):
    rows = [frontier.annotate(r) for r in table()]
    front = frontier.front_of(rows)
    out = tmp_path / "s.png"
    drawn = frontier.plot_sweep(rows, front, out, "MobileNet v1 on x86\nmachine class test")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 300
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        with Image.open(out) as im:
            im.verify()
            assert im.format == "PNG" and im.size == (width, height)
    expect = [
        (r["median_ms"], r["top1"], frontier.label(r["alpha"], r["resolution"])) for r in rows if frontier.eligible(r)
    ]
    assert drawn["points"] == expect
    assert drawn["front"] == [
        (rows[i]["median_ms"], rows[i]["top1"], frontier.label(rows[i]["alpha"], rows[i]["resolution"])) for i in front
    ]
    assert [x for x, _, _ in drawn["front"]] == sorted(x for x, _, _ in drawn["front"])
    assert drawn["left_out"] == ["0.25-32 (no published figure)", "0.5-128 (numerics failed)"]


@pytest.mark.unit
def test_csv_matches_table():
    rows = [frontier.annotate(r) for r in table()]
    lines = frontier.to_csv(rows, frontier.front_of(rows)).splitlines()
    assert lines[0].split(",")[:5] == ["alpha", "resolution", "mult_adds_m", "params_m", "top1"]
    assert len(lines) == 1 + len(rows)
    assert lines[1].startswith("1.0,224,1.0,0.5,70.9,89.9,") and ",True," in lines[1]


# ------------------------------------------------------------------------------------------- options, CLI errors


@pytest.mark.unit
def test_options_validate():
    from tvmnet.core.endpoint import Endpoint
    from tvmnet.core.targets import load_target

    x86 = load_target("x86")
    opts = sweep.SweepOptions(target=x86, alphas=("0.5", "0.50", "0.25"), resolutions=("128",), out=Path("o"))
    assert opts.alphas == (0.5, 0.25) and opts.resolutions == (128,) and len(opts.pairs()) == 2
    assert opts.path == Path("o") / host_class() / "sweep.json"
    assert "0.5, 0.25" in opts.display()
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        sweep.SweepOptions(target=x86, alphas=("1.5",))
    with pytest.raises(UsageError, match="multiple of 32"):
        sweep.SweepOptions(target=x86, resolutions=("100",))
    with pytest.raises(UsageError, match="--rpc HOST:PORT or --tracker"):
        sweep.SweepOptions(target=load_target("rpi4"))
    with pytest.raises(UsageError, match="--tracker"):
        sweep.SweepOptions(target=load_target("rpi4"), rpc=Endpoint(rpc="127.0.0.1:9090"), tune_minutes=1)
    sweep.SweepOptions(target=load_target("rpi4"), rpc=Endpoint(rpc="127.0.0.1:9090"))  # a board: fine


@pytest.mark.unit
@pytest.mark.parametrize(
    "args,code,needles",
    [
        (["sweep", "--alphas", "0.5,1.5"], 2, ["(0, 1]"]),
        (["sweep", "--resolutions", "128,100"], 2, ["multiple of 32"]),
        (["sweep", "--target", "pdp11"], 3, ["unknown target", "x86"]),
        (["sweep", "--target", "rpi4", "--alphas", "0.25"], 2, ["--rpc", "--tracker"]),
    ],
)
def test_sweep_bad_input_is_one_line(tmp_path, args, code, needles):
    res = run_cli(*args, "--out", tmp_path)
    assert res.returncode == code
    one_line_error(res, *needles)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.unit
def test_pick_without_sweep_names_the_command(tmp_path):
    one_line_error(run_cli("pick", "--budget-ms", "10", "--out", tmp_path), "tvmnet sweep --target x86", "--out")


@pytest.mark.unit
def test_pick_cli_budget_error_and_build(tmp_path, monkeypatch, capsys):
    d = tmp_path / host_class()
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps({"format": frontier.FORMAT, "rows": table()}))
    res = run_cli("pick", "--budget-ms", "0.5", "--out", tmp_path)
    assert res.returncode == 10
    one_line_error(res, "0.25-128", "1.000 ms")

    # -o builds the pick directly (compile_model stubbed: the build itself is tested elsewhere)
    import tvmnet.build.compiler
    from tvmnet import cli

    built = {}

    class FakeArtifact:
        def summary(self):
            return "stub"

    def fake_compile(opts, progress=None):
        built["opts"] = opts
        return FakeArtifact()

    monkeypatch.setattr(tvmnet.build.compiler, "compile_model", fake_compile)
    assert cli.main(["pick", "--budget-ms", "5", "--out", str(tmp_path), "-o", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "--alpha 0.75 --resolution 160" in out and "compiled stub" in out
    opts = built["opts"]
    assert (opts.model.alpha, opts.model.resolution, opts.output, opts.tuning_log) == (
        0.75,
        160,
        tmp_path / "b",
        "auto",
    )


# ------------------------------------------------------------------------------------------- (e) e2e


@pytest.mark.e2e
@pytest.mark.slow  # ~100 s on 2 cores: run with -m slow
def test_sweep_end_to_end(tmp_path):
    t0 = time.perf_counter()
    args = [
        "sweep",
        "--target",
        "x86",
        "--alphas",
        "0.5,0.25",
        "--resolutions",
        "128",
        "--out",
        tmp_path,
        "--repeat",
        "5",
        "--min-repeat-ms",
        "20",
    ]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    d = tmp_path / host_class()
    doc = json.loads((d / "sweep.json").read_text())
    rows = {(r["alpha"], r["resolution"]): r for r in doc["rows"]}
    assert set(rows) == {(0.5, 128), (0.25, 128)}
    for r in rows.values():
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["validated"] is True
        assert r["validation"]["max_abs"] < 1e-3 and r["kernels_total"] > 0
        assert 0 <= r["kernels_tuned"] <= r["kernels_total"]
    assert (rows[0.5, 128]["top1"], rows[0.25, 128]["top1"]) == (56.3, 41.5)
    assert rows[0.5, 128]["pareto"] is True  # the most accurate point is always on the front
    assert doc["machine_class"]["key"] == host_class() and doc["accuracy_source"] == "tf-slim"
    csv_lines = (d / "sweep.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("alpha,resolution")
    assert (d / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert res.stderr.count("] 0.5-128: median") == 1 and res.stderr.count("] 0.25-128: median") == 1
    assert "TensorFlow model garden" in res.stdout and "2 pair(s) measured" in res.stdout
    first = time.perf_counter() - t0

    again = run_cli(*args)  # resumable: nothing rebuilt
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 pair(s) measured, 2 measured before and skipped" in again.stdout
    assert again.stderr.count("skipped") == 2
    assert json.loads((d / "sweep.json").read_text())["rows"] == doc["rows"]

    p = run_cli("pick", "--target", "x86", "--budget-ms", "1e6", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "pick:      alpha 0.5 resolution 128" in p.stdout and "runner-up: alpha 0.25 resolution 128" in p.stdout
    assert "tvmnet compile --target x86 --alpha 0.5 --resolution 128 -o build/mobilenet-0.5-128" in p.stdout
    print(f"e2e: first sweep {first:.1f} s, all {time.perf_counter() - t0:.1f} s")
