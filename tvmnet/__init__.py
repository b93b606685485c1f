"""tvmnet: MobileNet v1 from PyTorch to tuned, validated machine code through Apache TVM.

The Python API mirrors the command line::

    from tvmnet import ModelConfig, load_target, CompileOptions, compile_model
    art = compile_model(CompileOptions(ModelConfig(alpha=0.5), load_target("x86"), Path("build/m")))
"""
__version__ = "0.1.0"

from .config import ModelConfig  # noqa: E402
from .errors import TvmnetError  # noqa: E402
from .targets import load_target, preset_names  # noqa: E402


def __getattr__(name):
    # Heavy modules (TVM, torch) load lazily so `tvmnet --help` stays fast.
    lazy = {
        "CompileOptions": ("compiler", "CompileOptions"), "compile_model": ("compiler", "compile_model"),
        "load_artifact": ("artifact", "load_artifact"), "TuneOptions": ("tuning", "TuneOptions"),
        "tune_model": ("tuning", "tune_model"), "layer_table": ("models", "layer_table"),
        "build_model": ("models", "build_model"),
    }
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(name)


__all__ = ["ModelConfig", "TvmnetError", "load_target", "preset_names", "CompileOptions", "compile_model",
           "load_artifact", "TuneOptions", "tune_model", "layer_table", "build_model", "__version__"]
