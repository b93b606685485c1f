"""MetaSchedule's logging, left as it was found.

Every TuneContext MetaSchedule creates runs ``create_loggers``, a ``logging.config.dictConfig``
that puts a console and a file handler on the ``tvm.s_tir.meta_schedule`` logger, one log file
per task on a child logger, and lists the handlers already on that logger by name. Two things
follow in a process that tunes more than once (the tests, a Python user, ``refine``, ``sweep``):

- the handlers and their open log files stay behind after the tune, on loggers the caller
  never configured;
- a handler on that logger without a name (added by anyone, with ``addHandler``) makes the
  next ``create_loggers`` fail with ``AttributeError: 'NoneType' object has no attribute
  'format'``.

``kept_metaschedule_logging`` restores every ``tvm.s_tir.meta_schedule*`` logger's handlers,
level, propagation and ``disabled`` flag on the way out and closes the handlers added meanwhile;
``without_unnamed_handlers`` lifts the unnamed handlers off for one ``create_loggers`` call.
"""

from __future__ import annotations

import contextlib
import functools
import logging

PREFIX = "tvm.s_tir.meta_schedule"


def _loggers() -> dict:
    return {
        name: lg
        for name, lg in list(logging.Logger.manager.loggerDict.items())
        if (name == PREFIX or name.startswith(PREFIX + ".")) and isinstance(lg, logging.Logger)
    }


NEUTRAL = ([], logging.NOTSET, True, False)  # a logger nobody configured


def logging_state() -> dict:
    """Each configured MetaSchedule logger's (handlers, level, propagate, disabled)."""
    state = {name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for name, lg in _loggers().items()}
    return {name: st for name, st in state.items() if st != NEUTRAL}


@contextlib.contextmanager
def kept_metaschedule_logging():
    """MetaSchedule's loggers as they were before, after; handlers added meanwhile are closed."""
    before = logging_state()
    kept = {id(h) for handlers, *_ in before.values() for h in handlers}
    try:
        yield
    finally:
        for name, lg in _loggers().items():
            for h in lg.handlers:
                if id(h) not in kept:
                    h.close()
            handlers, level, propagate, disabled = before.get(name, NEUTRAL)
            lg.handlers = list(handlers)
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def keeps_metaschedule_logging(fn):
    """Decorator: ``fn`` runs inside ``kept_metaschedule_logging``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with kept_metaschedule_logging():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def without_unnamed_handlers():
    """The ``tvm.s_tir.meta_schedule`` logger's handlers without a name, lifted off meanwhile."""
    lg = logging.getLogger(PREFIX)
    unnamed = [h for h in lg.handlers if h.get_name() is None]
    for h in unnamed:
        lg.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            lg.addHandler(h)
