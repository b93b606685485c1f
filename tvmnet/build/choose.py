"""Which layout, and so which pipeline generation, a build applies its logs in.

Records are per kernel shape, and the layout shapes the kernels: a log tuned in NCHW (before
NHWC existed) serves only NCHW kernels. The current generation is the target's default layout
(``passes.pipeline.generation``). With no ``--layout``:

- the current generation wins when this machine's class covers it fully (nothing to weigh);
- otherwise the other layout is lowered too, and when it is not plainly worse (fewer kernels
  tuned, no more of this class's own), the choice is unknown: a current-generation record of a
  near class against a stale record of this exact class. Where this machine can run the target,
  both candidates are built and timed in turn here (seconds) and the faster is applied;
- where it cannot (a board), the current generation wins unless it leaves kernels naive that the
  other layout's logs cover (a naive kernel is several times slower than any tuned one).

What was weighed, and how, goes into the compile's log line and ``metadata.json``.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

log = logging.getLogger(__name__)


def coverage(choice) -> tuple:
    """How much a log choice covers: (kernels from this machine's own class, kernels from any), as shares."""
    own = choice.by_source.get(choice.this_class, 0) if choice.match != "given" else choice.kernels_tuned
    total = max(choice.kernels_total, 1)
    return own / total, choice.kernels_tuned / total


def _describe(layout: str, choice) -> dict:
    from tvmnet.passes.pipeline import generation

    own, tuned = coverage(choice)
    return {
        "layout": layout,
        "generation": generation(layout),
        "kernels_tuned": choice.kernels_tuned,
        "kernels_total": choice.kernels_total,
        "kernels_by_source": dict(choice.by_source),
    }


def lower_and_choose_logs(mod, opts, input_shape=None, say: Optional[Callable[[str], None]] = None):
    """Lower ``mod`` and pick its records (``tune.classes.choose_logs``) in the layout described
    above. ``input_shape`` given: an unknown choice is timed in turn (the builds are kept on the
    choice, ``choice.built``, for the caller to reuse). Returns (layout, lowered module, choice)."""
    from tvmnet.passes import pipeline
    from tvmnet.tune import classes

    spec = opts.target
    current = opts.layout or spec.default_layout
    cands = []
    for layout in [current] + ([] if opts.layout else [lay for lay in pipeline.LAYOUTS if lay != current]):
        lowered = pipeline.lower_to_tir(mod, spec, gemm=opts.gemm, layout=layout)
        choice = classes.choose_logs(spec, opts.tuning_log, pipeline.extract_tasks(lowered, spec))
        cands.append((layout, lowered, choice))
        if opts.tuning_log is None or coverage(choice)[0] == 1.0:
            break
    if len(cands) == 1:
        return cands[0]
    (_, _, a), (_, _, b) = cands
    (a_own, a_all), (b_own, b_all) = coverage(a), coverage(b)
    if b_all < a_all or (b_all == a_all and b_own <= a_own) or b_all == 0:
        return cands[0]  # the other layout is plainly no better
    weighed = {"candidates": [_describe(lay, ch) for lay, _, ch in cands]}
    can_time = input_shape is not None and spec.device == "cpu" and spec.host_mismatch() is None
    if can_time:
        pick = _time_candidates(cands, spec, input_shape, weighed, say)
    else:
        pick = 1 if b_all > a_all else 0
        weighed["how"] = f"not timed (this machine cannot run {spec.name}); " + (
            f"{cands[0][0]} leaves kernels naive that the {cands[1][0]} logs cover"
            if pick
            else f"the current generation ({cands[0][0]}) ranks above a stale log"
        )
    weighed["applied"] = cands[pick][0]
    cands[pick][2].layout_choice = weighed
    return cands[pick]


def _time_candidates(cands, spec, input_shape, weighed: dict, say) -> int:
    """Build every candidate, time them in turn here; the index of the faster."""
    import tvm

    from tvmnet.build.inturn import time_in_turn
    from tvmnet.passes import pipeline

    if say:
        say(
            f"weighing layouts: {cands[0][0]} (current generation, {_sources(cands[0][2])}) against "
            f"{cands[1][0]} ({_sources(cands[1][2])}): building both and timing them in turn here"
        )
    built = []
    for _, lowered, choice in cands:
        final = pipeline.finalize(lowered, spec, choice.database)
        built.append((final, tvm.compile(final, target=spec.tvm_target())))
    spec.use_threads()
    res = time_in_turn([ex for _, ex in built], input_shape)
    for cand, ms, ratio in zip(weighed["candidates"], res.median_ms, res.ratio):
        cand.update(median_ms=round(ms, 4), ratio=round(ratio, 4))
    pick = res.fastest()
    weighed["how"] = (
        f"timed in turn here ({res.rounds} rounds x {res.runs} runs): "
        + ", ".join(f"{lay} {ms:.3f} ms" for (lay, _, _), ms in zip(cands, res.median_ms))
        + f"; per-round ratio {cands[1][0]}/{cands[0][0]} {res.ratio[1]:.3f}"
    )
    cands[pick][2].built = built[pick]
    return pick


def _sources(choice) -> str:
    if not choice.by_source:
        return "no records"
    parts = ", ".join(f"{n} from {src}" for src, n in choice.by_source.items())
    return f"{choice.kernels_tuned}/{choice.kernels_total} kernels tuned: {parts}"
