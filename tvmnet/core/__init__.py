"""The shared vocabulary of every stage: model and target configuration, errors, paths."""

__version__ = "0.1.0"
