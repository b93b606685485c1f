"""`tvmnet sweep` / `tvmnet pick`: Pareto front, published accuracy, pick, plot, and small real
sweeps end to end (two published pairs at resolution 128, untuned kernels where the logs have
none, in the extended run; one pair in fp32 and int8, `--precisions fp32,int8`, by default)."""

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


def row(alpha, res, ms, validated=True, target="x86", precision=None):
    """A hand-made sweep row (accuracy comes from the data file, as in a real sweep); without a
    precision it is a row as sweeps wrote them before int8 (fp32)."""
    return {
        "alpha": alpha,
        "resolution": res,
        **({"precision": precision} if precision else {}),
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
    from tvmnet import cli

    built = _stub_compile(monkeypatch)
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


# ------------------------------------------------------------------------------------------- (e) precision

TF_QUANT = {
    1.0: {224: (69.7, 89.5), 192: (69.0, 88.9), 160: (67.3, 87.7), 128: (64.0, 85.5)},
    0.75: {224: (67.9, 88.1), 192: (66.2, 87.1), 160: (63.9, 85.5), 128: (59.8, 82.8)},
    0.5: {224: (62.2, 84.5), 192: (60.4, 83.2), 160: (57.7, 81.3), 128: (54.9, 78.9)},
    0.25: {224: (48.2, 73.8), 192: (45.8, 71.9), 160: (43.5, 69.1), 128: (39.9, 65.8)},
}  # tensorflow/models research/slim/nets/mobilenet_v1.md, the *_quant rows


def mixed():
    """fp32 and int8 points: int8 is faster, a little less accurate."""
    return [
        row(1.0, 224, 10.0, precision="fp32"),
        row(1.0, 224, 4.0, precision="int8"),  # 69.7: faster than 0.75-224 fp32 and more accurate
        row(0.75, 224, 6.0),  # an old row: fp32, 68.4, dominated by 1.0-224 int8
        row(0.5, 160, 3.0, precision="fp32"),  # 59.1
        row(0.5, 160, 1.0, precision="int8"),  # 57.7
        row(0.25, 128, 1.5),  # fp32 41.5, dominated by 0.5-160 int8 (faster, more accurate)
        row(0.25, 128, 2.0, precision="int8"),  # 39.9, dominated by 0.5-160 int8
        row(0.25, 96, 0.3, precision="int8"),  # no published int8 figure: off the front
    ]


@pytest.mark.unit
def test_accuracy_int8_is_the_quant_table_with_its_source():
    quant = accuracy.table(accuracy.PRIMARY_INT8)
    assert len(quant) == 16 and all(p.precision == "int8" for p in quant)
    for p in quant:
        assert (p.top1, p.top5) == TF_QUANT[p.alpha][p.resolution], p
        assert p.where == f"MobileNet_v1_{p.alpha:.2f}_{p.resolution}_quant".replace("1.00", "1.0")
        assert accuracy.figure(p.alpha, p.resolution, "int8") == p
        assert accuracy.figure(p.alpha, p.resolution) == accuracy.lookup(p.alpha, p.resolution)  # fp32 unchanged
    fig = accuracy.figure(0.5, 160, "int8")
    assert (fig.top1, fig.source, fig.where) == (57.7, "tf-slim-quant", "MobileNet_v1_0.50_160_quant")
    assert accuracy.figure(0.5, 160, "fp32").top1 == 59.1
    assert set(accuracy.published(1.0, 224, "int8")) == {"tf-slim-quant"}  # the paper is fp32 only
    assert accuracy.lookup(0.25, 128, "tf-slim-quant").top1 == 39.9
    assert accuracy.primary("int8") == "tf-slim-quant" and accuracy.source_precision("tf-slim-quant") == "int8"
    assert "mobilenet_v1.md" in accuracy.citation("tf-slim-quant") and "_quant" in accuracy.citation("tf-slim-quant")
    what = accuracy.description("tf-slim-quant")
    for needle in (
        "quantization-aware training",
        "contrib/quantize",
        "TFLite",
        "uint8",
        "post-training",
        "not a measurement",
    ):
        assert needle in what, needle
    assert accuracy.figure(0.25, 96, "int8") is None and accuracy.published(0.6, 224, "int8") == {}
    assert len(accuracy.table(accuracy.PRIMARY)) == 16  # the fp32 tables are as they were


@pytest.mark.unit
def test_old_rows_without_precision_read_as_fp32(tmp_path):
    d = tmp_path / host_class()
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps({"format": frontier.FORMAT, "rows": table()}))  # no precision
    from tvmnet.core.targets import load_target

    _, rows = frontier.load_rows(load_target("x86"), tmp_path)
    assert {r["precision"] for r in rows} == {"fp32"}
    r = next(r for r in rows if (r["alpha"], r["resolution"]) == (0.5, 224))
    assert (r["top1"], r["top1_source_id"]) == (63.3, "tf-slim")
    old = row(0.5, 224, 3.0)
    assert frontier.same_pair(old, 0.5, 224, "x86", "fp32") and frontier.same_pair(old, 0.5, 224, "x86")
    assert not frontier.same_pair(old, 0.5, 224, "x86", "int8")  # an int8 point is not measured by it
    lines = frontier.to_csv(rows, frontier.front_of(rows)).splitlines()
    col = lines[0].split(",").index("precision")
    assert {ln.split(",")[col] for ln in lines[1:]} == {"fp32"}
    assert frontier.pick(table(), 5.0).precision == "fp32"


@pytest.mark.unit
def test_front_spans_both_precisions_and_the_plot_marks_them(tmp_path):
    rows = [frontier.annotate(r) for r in mixed()]
    front = [frontier.row_label(rows[i]) for i in frontier.front_of(rows)]
    # int8 0.5-160 (1.0 ms) dominates fp32 0.25-128 and int8 0.25-128; int8 1.0-224 dominates fp32 0.75-224
    assert front == ["0.5-160-int8", "0.5-160", "1.0-224-int8", "1.0-224"]
    r = next(r for r in rows if frontier.row_label(r) == "0.25-96-int8")
    assert r["top1"] is None and r["top1_source"] == accuracy.NO_FIGURE and r["precision"] == "int8"
    text = frontier.format_table(rows, frontier.front_of(rows), "t")
    assert "int8 top-1: the same table's _quant rows" in text and "no published figure" in text
    assert [ln.split()[2] for ln in text.splitlines()[4:]] == [r["precision"] for r in rows]
    drawn = frontier.plot_sweep(rows, frontier.front_of(rows), tmp_path / "s.png", "t")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC
    assert drawn["precisions"] == {
        "fp32": ["1.0-224", "0.75-224", "0.5-160", "0.25-128"],
        "int8": ["1.0-224-int8", "0.5-160-int8", "0.25-128-int8"],
    }
    assert [name for _, _, name in drawn["front"]] == front and drawn["left_out"] == [
        "0.25-96-int8 (no published figure)"
    ]
    assert frontier.STYLE["fp32"] != frontier.STYLE["int8"]
    lines = frontier.to_csv(rows, frontier.front_of(rows)).splitlines()
    col = lines[0].split(",").index("precision")
    assert [ln.split(",")[col] for ln in lines[1:]] == [r["precision"] for r in rows]


@pytest.mark.unit
def test_pick_takes_int8_when_it_is_faster_and_accurate_enough():
    p = frontier.pick(mixed(), 5.0)  # fp32 1.0-224 (10 ms) and 0.75-224 (6 ms) are over; int8 1.0-224 fits
    assert (p.best["alpha"], p.best["resolution"], p.precision) == (1.0, 224, "int8")
    assert (p.runner_up["alpha"], p.runner_up["resolution"], p.runner_up["precision"]) == (0.5, 160, "fp32")
    assert p.command == (
        "tvmnet compile --target x86 --alpha 1.0 --resolution 224 --precision int8 -o build/mobilenet-1.0-224-int8"
    )
    text = "\n".join(p.lines())
    assert "pick:      alpha 1.0 resolution 224 int8: top-1 69.7%" in text
    acc = next(ln for ln in p.lines() if ln.startswith("accuracy:"))
    for needle in ("69.7%", "MobileNet_v1_1.0_224_quant", "TensorFlow model garden, quantized checkpoints",
                   "https://github.com/tensorflow/models/blob/master/research/slim/nets/mobilenet_v1.md",
                   "quantization-aware training", "post-training"):  # fmt: skip
        assert needle in acc, needle
    assert p.command in text and p.precisions == ("fp32", "int8")
    big = frontier.pick(mixed(), 100)  # room for all: the most accurate, fp32, and no int8 note
    assert (big.best["precision"], big.runner_up["precision"]) == ("fp32", "int8")
    assert "--precision" not in big.command and not any(ln.startswith("accuracy:") for ln in big.lines())
    with pytest.raises(BudgetError, match=r"0.5-160-int8 \(alpha 0.5, resolution 160, int8\) at 1.000 ms"):
        frontier.pick(mixed(), 0.5)  # 0.25-96-int8 at 0.3 ms has no published figure


@pytest.mark.unit
def test_options_precisions():
    from tvmnet.core.targets import load_target

    x86 = load_target("x86")
    opts = sweep.SweepOptions(
        target=x86, alphas=("0.5",), resolutions=("128", "96"), precisions=("INT8", "fp32", "int8")
    )
    assert opts.precisions == ("int8", "fp32") and len(opts.pairs()) == 2
    assert opts.points() == [(0.5, 128, "int8"), (0.5, 128, "fp32"), (0.5, 96, "int8"), (0.5, 96, "fp32")]
    assert "x int8, fp32 (4 points)" in opts.display()
    assert sweep.SweepOptions(target=x86).precisions == ("fp32",)  # the default: as before
    with pytest.raises(UsageError, match="--precisions fp16: choose from fp32, int8"):
        sweep.SweepOptions(target=x86, precisions=("fp32", "fp16"))


@pytest.mark.unit
@pytest.mark.parametrize(
    "args,code,needles",
    [
        (["--precisions", "fp16"], 2, ["--precisions fp16", "fp32, int8"]),
        (["--precisions", "fp32,int4"], 2, ["--precisions int4", "fp32, int8"]),
        (["--precisions", "fp32,int8", "--target", "cuda"], 3, ["--precision int8 builds for CPU targets", "cuda"]),
    ],
)
def test_sweep_bad_precisions_is_one_line(tmp_path, args, code, needles):
    res = run_cli("sweep", "--alphas", "0.25", "--resolutions", "128", *args, "--out", tmp_path)
    assert res.returncode == code
    one_line_error(res, *needles)
    assert not any(tmp_path.iterdir())  # nothing written


def _stub_compile(monkeypatch) -> dict:
    """compile_model replaced by a stub that records its options (``built["opts"]``): pick's own
    plumbing under test, the build itself is tested elsewhere."""
    import tvmnet.build.compiler

    built = {}

    class FakeArtifact:
        def summary(self):
            return "stub"

    def fake_compile(opts, progress=None):
        built["opts"] = opts
        return FakeArtifact()

    monkeypatch.setattr(tvmnet.build.compiler, "compile_model", fake_compile)
    return built


@pytest.mark.unit
def test_pick_cli_builds_an_int8_pick_in_int8(tmp_path, monkeypatch, capsys):
    d = tmp_path / host_class()
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps({"format": frontier.FORMAT, "rows": mixed()}))
    from tvmnet import cli

    built = _stub_compile(monkeypatch)  # the build is tested elsewhere
    assert cli.main(["pick", "--budget-ms", "5", "--out", str(tmp_path), "-o", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "--alpha 1.0 --resolution 224 --precision int8" in out and "MobileNet_v1_1.0_224_quant" in out
    opts = built["opts"]
    assert (opts.model.alpha, opts.model.resolution, opts.precision, opts.output) == (1.0, 224, "int8", tmp_path / "b")


# ------------------------------------------------------------------------------------------- (f) e2e


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


@pytest.mark.e2e  # default run: ~2 min on 2 cores (one pair, fp32 and int8: two builds)
def test_sweep_fp32_and_int8_end_to_end(tmp_path):
    t0 = time.perf_counter()
    args = ["sweep", "--target", "x86", "--alphas", "0.25", "--resolutions", "128", "--out", tmp_path,
            "--repeat", "5", "--min-repeat-ms", "20"]  # fmt: skip
    res = run_cli(*args, "--precisions", "fp32,int8")
    assert res.returncode == 0, res.stderr[-3000:]
    d = tmp_path / host_class()
    doc = json.loads((d / "sweep.json").read_text())
    rows = {r["precision"]: r for r in doc["rows"]}
    assert set(rows) == {"fp32", "int8"} and len(doc["rows"]) == 2
    for r in rows.values():
        assert (r["alpha"], r["resolution"]) == (0.25, 128) and r["validated"] is True
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["kernels_total"] > 0
    fp32, int8 = rows["fp32"], rows["int8"]
    assert fp32["validation"]["reference"] == "PyTorch" and fp32["validation"]["max_abs"] < 1e-3
    # int8: validated as `tvmnet validate` does, within one output step of ONNX Runtime's integer kernels
    assert "ONNX Runtime's integer kernels" in int8["validation"]["reference"]
    assert int8["validation"]["max_abs"] <= int8["validation"]["atol"] and int8["validation"]["rtol"] == 0
    assert (fp32["top1"], fp32["top1_source_id"]) == (41.5, "tf-slim")
    assert (int8["top1"], int8["top1_source_id"]) == (39.9, "tf-slim-quant")
    assert "MobileNet_v1_0.25_128_quant" in int8["top1_source"]
    assert fp32["pareto"] is True  # the most accurate point is always on the front
    assert doc["accuracy_sources"]["int8"]["source"] == "tf-slim-quant" and doc["accuracy_source"] == "tf-slim"
    assert (d / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    csv_lines = (d / "sweep.csv").read_text().splitlines()
    col = csv_lines[0].split(",").index("precision")
    assert sorted(ln.split(",")[col] for ln in csv_lines[1:]) == ["fp32", "int8"]
    assert res.stderr.count("] 0.25-128: median") == 1 and res.stderr.count("] 0.25-128-int8: median") == 1
    assert "2 point(s) (alpha, resolution, precision) measured" in res.stdout
    first = time.perf_counter() - t0

    again = run_cli(*args, "--precisions", "int8")  # the int8 point was measured: skipped, nothing built
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 pair(s) measured, 1 measured before and skipped" in again.stdout and "0.25-128-int8" in again.stderr

    # across precisions: the most accurate within a budget both meet, the other precision the runner-up
    budget = max(fp32["median_ms"], int8["median_ms"]) * 2
    p = run_cli("pick", "--target", "x86", "--budget-ms", budget, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "2 of 2 measured points" in p.stdout
    assert "pick:      alpha 0.25 resolution 128 fp32: top-1 41.5%" in p.stdout
    assert "runner-up: alpha 0.25 resolution 128 int8: top-1 39.9%" in p.stdout
    # within the int8 point's time only, where it is the faster: the pick is int8, built with --precision int8
    if int8["median_ms"] < fp32["median_ms"]:
        p = run_cli("pick", "--target", "x86", "--budget-ms", int8["median_ms"], "--out", tmp_path)
        assert p.returncode == 0, p.stderr
        assert "pick:      alpha 0.25 resolution 128 int8" in p.stdout and "--precision int8" in p.stdout
    print(f"e2e: sweep fp32+int8 {first:.1f} s, all {time.perf_counter() - t0:.1f} s")
