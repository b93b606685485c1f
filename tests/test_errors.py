"""Bad input: one line on stderr naming the fix, no traceback, non-zero exit, nothing lost."""

import pytest
import torch
from conftest import run_cli

from tvmnet.models import MobileNetV1

pytestmark = pytest.mark.unit


def one_line_error(res, *needles):
    assert res.returncode != 0
    lines = [l for l in res.stderr.splitlines() if l.strip() and not l.startswith("[tvmnet]")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tvmnet: error:"), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("alpha", ["0", "1.5", "-0.5", "nan"])
def test_bad_alpha(alpha):
    one_line_error(run_cli("info", "--alpha", alpha), "(0, 1]")


@pytest.mark.parametrize("res", ["100", "0", "16", "-32"])
def test_bad_resolution(res):
    one_line_error(run_cli("info", "--resolution", res), "multiple of 32")


def test_unknown_target_lists_presets(tmp_path):
    line = one_line_error(run_cli("compile", "--target", "pdp11", "-o", tmp_path / "o"), "pdp11", "x86", "rpi4", "cuda")
    assert "unknown target" in line


def test_bad_inline_target(tmp_path):
    one_line_error(run_cli("compile", "--target", "{not json", "-o", tmp_path / "o"), "JSON")


def test_missing_weights(tmp_path):
    one_line_error(run_cli("compile", "--weights", tmp_path / "nope.pt", "-o", tmp_path / "o"), "does not exist")


def test_corrupt_weights(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    one_line_error(run_cli("compile", "--weights", bad, "-o", tmp_path / "o"), "cannot read weights")


def test_weights_of_another_alpha(tmp_path):
    path = tmp_path / "w05.pt"
    torch.save(MobileNetV1(0.5).state_dict(), path)
    one_line_error(run_cli("compile", "--alpha", "0.25", "--weights", path, "-o", tmp_path / "o"), "--alpha", "shape")


def test_output_dir_with_other_files_is_kept(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    one_line_error(run_cli("compile", "--alpha", "0.25", "--resolution", "32", "-o", out), "not a tvmnet artifact")
    assert (out / "thesis.tex").read_text() == "do not delete"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_validate_missing_artifact(tmp_path):
    one_line_error(run_cli("validate", tmp_path / "none"), "tvmnet compile")


def test_validate_corrupt_metadata(tmp_path):
    d = tmp_path / "art"
    d.mkdir()
    (d / "metadata.json").write_text("{ truncated")
    one_line_error(run_cli("validate", d), "corrupt")


def test_verbose_shows_traceback():
    res = run_cli("--verbose", "info", "--alpha", "2")
    assert res.returncode != 0 and "Traceback" in res.stderr
