"""tvmnet: MobileNet v1 from PyTorch to tuned, validated machine code through Apache TVM.

The Python API mirrors the command line::

    from tvmnet import ModelConfig, load_target, CompileOptions, compile_model
    art = compile_model(CompileOptions(ModelConfig(alpha=0.5), load_target("x86"), Path("build/m")))
"""

from tvmnet.core import __version__
from tvmnet.core.config import ModelConfig
from tvmnet.core.errors import TvmnetError
from tvmnet.core.targets import load_target, preset_names

# The Python API, by name -> the module that defines it. Heavy modules (TVM, torch) load lazily,
# on first use, so that `tvmnet --help` stays fast.
_API = {
    "CompileOptions": "tvmnet.build.compiler",
    "compile_model": "tvmnet.build.compiler",
    "load_artifact": "tvmnet.build.artifact",
    "TuneOptions": "tvmnet.tune.options",
    "tune_model": "tvmnet.tune.search",
    "layer_table": "tvmnet.models",
    "build_model": "tvmnet.models",
    "SweepOptions": "tvmnet.study.sweep",
    "run_sweep": "tvmnet.study.sweep",
    "pareto_front": "tvmnet.study.frontier",
    "pick": "tvmnet.study.frontier",
}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(name)


__all__ = ["ModelConfig", "TvmnetError", "load_target", "preset_names", "__version__", *_API]
