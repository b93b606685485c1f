"""One error hierarchy for tvmnet; the CLI maps each class to an exit code.

Every message says what was given, what is allowed, and how to fix it, on one line.
"""

from __future__ import annotations


def err_line(err: BaseException, last: bool = True) -> str:
    """The last (or first) non-empty line of an exception's message, or its type name.

    TVM's errors end with the useful line, after a C++ trace; Python's start with it."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]).strip() if lines else type(err).__name__


class TvmnetError(Exception):
    """Base class of every error tvmnet reports to a user."""

    exit_code = 1


class UsageError(TvmnetError):
    """A bad argument: alpha, resolution, thread count, sample count..."""

    exit_code = 2


class TargetError(TvmnetError):
    """Unknown or malformed target, or a target this machine cannot serve."""

    exit_code = 3


class WeightsError(TvmnetError):
    """Missing, unreadable or ill-fitting weights / ONNX model."""

    exit_code = 4


class ArtifactError(TvmnetError):
    """A missing, foreign or corrupt artifact directory, or one built for another machine."""

    exit_code = 5


class TuningLogError(TvmnetError):
    """A missing, corrupt or foreign tuning database."""

    exit_code = 6


class ValidationError(TvmnetError):
    """Compiled model disagrees with the reference beyond tolerance."""

    exit_code = 7


class DeviceError(TvmnetError):
    """An RPC server, tracker, emulator or GPU that cannot be reached or died."""

    exit_code = 8


class ToolchainError(TvmnetError):
    """A compiler or system tool the target needs is missing."""

    exit_code = 9


class BudgetError(TvmnetError):
    """No measured configuration meets the latency budget (``tvmnet pick``)."""

    exit_code = 10
