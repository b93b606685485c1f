"""``compile_model``: model (zoo or ONNX) -> passes -> build for a target -> artifact dir."""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from tvmnet.build.artifact import FORMAT, LIBRARY, METADATA, Artifact, is_artifact_dir
from tvmnet.build.choose import lower_and_choose_logs
from tvmnet.core import __version__
from tvmnet.core.config import ModelConfig
from tvmnet.core.errors import ArtifactError, ToolchainError, TvmnetError, err_line
from tvmnet.core.targets import TargetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileOptions:
    """What to compile and how."""

    model: ModelConfig
    target: TargetSpec
    output: Path
    onnx: Optional[Path] = None
    tuning_log: Union[Path, str, None] = "auto"  # "auto": tuning_logs/<target>/ if present; None: no tuning
    gemm: bool = True
    layout: Optional[str] = None  # NCHW or NHWC; None: the target's default, or the one the logs cover better
    precision: str = "fp32"  # or "int8": quantized before the passes (tvmnet/quantize/)
    calibration: Optional[Path] = None  # int8: a folder of images; None: seeded samples
    calibration_samples: Optional[int] = None

    def display(self) -> str:
        src = f"ONNX {self.onnx}" if self.onnx else self.model.display()
        return (
            f"{src}\ntarget: {self.target.name} ({self.target.description})\nprecision: {self.precision}"
            f"\noutput: {self.output}"
        )


def check_output_dir(out: Path) -> None:
    """Refuse to write into a directory holding something other than a tvmnet artifact."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output {out} is a file; pass -o with a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not is_artifact_dir(out):
        raise ArtifactError(
            f"output directory {out} holds other files and is not a tvmnet artifact; "
            "pass -o with a new or empty directory (nothing was written)"
        )


POLICY_SOURCE = Path(__file__).with_name("policy.c")


def policy_object(spec: TargetSpec, workdir: Path) -> Path:
    """An object file (``build/policy.c``) whose constructor, when the library is loaded, sets
    tvmnet's thread policy (``core/threads.py``) unless already set, before TVM's pool starts in
    that process, and gives TVM's runtime a yield that sleeps once the CPU is contended: a
    board's RPC server gets both with the model, where no environment of ours reaches."""
    from tvmnet.core.threads import RUN_ENV

    obj = workdir / "tvmnet_policy.o"
    calls = "".join(f'setenv("{k}", "{v}", 0);' for k, v in RUN_ENV.items())
    compiler = spec.cross_compiler or shutil.which("gcc") or shutil.which("cc") or "gcc"
    flags = ["-x", "c", "-c", "-fPIC", "-O2", f"-DTVMNET_POLICY_ENV={calls}"]
    cmd = [compiler, *flags, "-o", str(obj), str(POLICY_SOURCE)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or str(err)
        raise ToolchainError(f"{compiler} could not build the thread-policy object: {detail.strip()[-300:]}") from err
    return obj


def export(ex, spec: TargetSpec, path: Path) -> None:
    """Export a built executable as a shared library, cross-compiled where the target says so,
    with the thread policy inside (``policy_object``) for CPU targets."""
    kwargs = {}
    if spec.cross_compiler:
        from tvm.support import cc

        kwargs["fcompile"] = cc.cross_compiler(spec.cross_compiler)
    with tempfile.TemporaryDirectory(prefix="tvmnet-policy-") as tmp:
        if spec.is_cpu:
            kwargs["addons"] = [str(policy_object(spec, Path(tmp)))]
        ex.export_library(str(path), **kwargs)


def elf_machine(path: Path) -> str:
    """ELF e_machine of a shared library, as an architecture name."""
    data = Path(path).read_bytes()[:20]
    if data[:4] != b"\x7fELF":
        return "unknown"
    code = int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")
    return {62: "x86_64", 183: "aarch64", 40: "arm", 3: "x86"}.get(code, f"elf-{code}")


def compile_model(opts: CompileOptions, progress=None) -> Artifact:
    """Build ``opts.model`` for ``opts.target`` into the artifact directory ``opts.output``.

    Writes into a temporary directory first and swaps it in at the end, so a failed build
    never destroys an earlier artifact.
    """
    from tvmnet.frontend import import_model

    spec, out = opts.target, Path(opts.output)
    say = progress or (lambda msg: log.info(msg))
    check_output_dir(out)
    spec.check_toolchain()
    if opts.tuning_log not in (None, "auto"):  # a missing or corrupt log fails now, not after the import
        from tvmnet.tune.logs import check_database_files

        check_database_files(Path(opts.tuning_log))
    t0 = time.perf_counter()

    quant = None
    with tempfile.TemporaryDirectory(prefix="tvmnet-int8-") as qdir:
        if opts.precision == "int8":
            from tvmnet.passes.int8 import graph_options, import_int8

            opts = graph_options(opts)
            mod, input_name, input_shape, quant = import_int8(opts, Path(qdir), say)
            model_info = quant.pop("model_info")
        else:
            say("importing model")
            mod, input_name, input_shape, model_info = import_model(opts.model, opts.onnx)
        return _build(opts, mod, input_name, input_shape, model_info, quant, say, t0)


def _build(opts, mod, input_name, input_shape, model_info, quant, say, t0) -> Artifact:
    import tvm

    from tvmnet.passes import pipeline
    from tvmnet.passes.weight_prefetch import prefetching_kernels

    spec, out = opts.target, Path(opts.output)
    say("running graph passes (fold BatchNorm, layout, pointwise conv -> GEMM) and lowering to TIR")
    layout, mod, choice = lower_and_choose_logs(mod, opts, input_shape=input_shape, say=say)
    kernels = pipeline.tir_kernels(mod)
    own = pipeline.own_kernels(mod)  # scheduled by tvmnet (the VNNI and ARM int8 kernels)
    int8_passes = quant.pop("passes", []) if quant is not None else []
    log_note = _describe_logs(choice, len(kernels) - len(own), opts)
    if quant is not None and not choice.kernels_tuned:
        log_note = (
            f"int8: {len(kernels) - len(own)} kernels with default schedules (no int8 records for them in the "
            "log; tvmnet tune --precision int8 makes them): correct, not fast"
        )
    if own:
        log_note += f"; {len(own)} kernels scheduled by tvmnet ({quant['kernels']})"
    if choice.layout_choice:
        log_note += f"; layout {layout} applied ({choice.layout_choice['how']})"
    say(log_note)
    built = choice.built  # a build already made while weighing the layouts
    mod = built[0] if built else pipeline.finalize(mod, spec, choice.database)
    prefetching = len(prefetching_kernels(mod))

    say(f"building for {spec.name}" + (f" with {spec.cross_compiler}" if spec.cross_compiler else ""))
    try:
        ex = built[1] if built else tvm.compile(mod, target=spec.tvm_target())
    except TvmnetError:
        raise
    except Exception as err:
        raise ToolchainError(
            f"TVM failed to build for {spec.name}: {err_line(err)}; run with --verbose for the trace"
        ) from err

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lib = staging / LIBRARY
        export(ex, spec, lib)
        if quant is not None:  # the quantized model travels with the artifact: it is the validation's reference
            shutil.copyfile(quant.pop("onnx_path"), staging / quant["reference"])
        machine = elf_machine(lib)
        if machine != spec.arch:
            raise ToolchainError(f"built library is {machine}, expected {spec.arch}; check the target's cross_compiler")
        out_shape = _output_shape(mod)
        meta = {
            "format": FORMAT,
            "tvmnet_version": __version__,
            "tvm_version": tvm.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "build_host": {"machine": platform.machine(), "python": sys.version.split()[0]},
            "target": spec.to_json(),
            "model": model_info,
            "input": {"name": input_name, "shape": list(input_shape), "dtype": "float32"},
            "output": {"shape": list(out_shape), "dtype": "float32"},
            "library": LIBRARY,
            "library_elf_machine": machine,
            "passes": int8_passes
            + ["FoldBatchNorm"]
            + (["ConvertLayout(NHWC)"] if layout == "NHWC" else [])
            + (["PointwiseToGemm"] if opts.gemm else [])
            + ([f"PrefetchWeights({prefetching} kernels)"] if prefetching else []),
            "layout": layout,
            "precision": opts.precision,
            **({"quantization": quant} if quant is not None else {}),
            "tuning": dict(choice.metadata(), note=log_note),
            "compile_seconds": round(time.perf_counter() - t0, 2),
        }
        (staging / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Artifact(out, meta)


def _describe_logs(choice, n_kernels: int, opts: CompileOptions) -> str:
    """One line: which class this machine is, what the logs hold, what was applied, the fix."""
    if choice.match is None and opts.tuning_log is None:
        return f"scheduling {n_kernels} kernels (no tuning log: --no-tuning-log)"
    sources = ", ".join(f"{n} from {src}" for src, n in choice.by_source.items()) or "none"
    picks = f", {choice.in_situ} of them picked in place by `tvmnet refine`" if choice.in_situ else ""
    if choice.match == "given":
        return (
            f"scheduling {n_kernels} kernels ({choice.kernels_tuned} from tuning log {choice.path}: {sources}{picks})"
        )
    if choice.match == "exact" and choice.kernels_tuned == choice.kernels_total:  # nothing to fix
        return (
            f"scheduling {n_kernels} kernels ({choice.kernels_tuned} from tuning log {choice.path}, "
            f"machine class {choice.this_class}{picks})"
        )
    m = opts.model
    fix = (
        f"tvmnet tune --target {opts.target.name} --alpha {m.alpha:g}"
        + (f" --resolution {m.resolution}" if m.resolution != 224 else "")
        + (" --precision int8" if opts.precision == "int8" else "")
        + " --trials 2000"
        + (" --tracker HOST:PORT --key KEY" if opts.target.is_cross else "")
    )
    held = ", ".join(choice.available) or "none"
    if choice.match is None:
        applied = "no schedules (every kernel naive and slow)"
    elif "estimated" in choice.match:
        applied = (
            f"{choice.kernels_tuned}/{choice.kernels_total} kernels scheduled ({sources}; the estimated log is "
            "tuned for this board by the cost proxy, not measured on it"
            + ("; the rest are another architecture's records, no kernel naive" if "transfer" in choice.match else "")
            + ")"
        )
    elif "transfer" in choice.match:
        applied = (
            f"{choice.kernels_tuned}/{choice.kernels_total} kernels scheduled with another architecture's "
            f"records ({sources}; no kernel naive, none tuned for this CPU)"
        )
    else:
        applied = f"{choice.kernels_tuned}/{choice.kernels_total} kernels tuned ({sources})"
    if opts.target.is_cross:
        no_board = fix.replace(" --trials 2000 --tracker HOST:PORT --key KEY", " --trials 400 --estimate")
        return (
            f"this machine is class {choice.this_class}; tuning logs hold {held}; applied {applied}; "
            f"a tune on the board beats them: run `{fix}` (no board: `{no_board}` tunes "
            + ("the stem and the depthwise convs" if opts.precision == "int8" else "the GEMMs and the stem")
            + " by the cost proxy)"
        )
    return (
        f"this machine is class {choice.this_class}; tuning logs hold {held}; applied {applied}; "
        f"schedules from another class run slower than a local tune: run `{fix}`"
    )


def _output_shape(mod) -> tuple:
    from tvm import relax

    ty = mod["main"].ret_ty
    while isinstance(ty, relax.TupleType):
        ty = ty.fields[0]
    return tuple(int(d) for d in ty.shape)


def _swap_in(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
