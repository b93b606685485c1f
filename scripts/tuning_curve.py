"""Latency reached after N tuning trials, or after M minutes of a tune: rebuild the model
from the records the database held then (records are appended in measurement order) and
time each build.

    python3 scripts/tuning_curve.py DB --alpha 0.5 --trials 250 500 1000 2000
    python3 scripts/tuning_curve.py DB --alpha 0.5 --minutes 5 10 20 30 --journal J

J is the journal `tvmnet tune` prints at its end (when each batch landed, and how many
lines the record file had then). Needs the *full* database (before `tvmnet prune-log`).
Prints one row per point: records used, kernels covered, median latency (time_evaluator,
after warm-up).
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--trials", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--minutes", type=float, nargs="+", help="points in minutes of tuning (needs --journal)")
    ap.add_argument("--journal", type=Path, help="the tune's journal (tvmnet tune prints its path)")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from tvmnet import CompileOptions, ModelConfig, compile_model, load_target

    # before TVM's thread pool starts (compile's constant folding starts it with 1 thread here)
    load_target(args.target).use_threads()
    from tvmnet.build.artifact import load_artifact
    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline
    from tvmnet.passes.pipeline import extract_tasks
    from tvmnet.run.runner import open_local
    from tvmnet.tune.logs import open_database

    spec = load_target(args.target)
    cfg = ModelConfig(args.alpha, args.resolution)
    mod, *_ = import_model(cfg)
    tasks = extract_tasks(pipeline.lower_to_tir(mod, spec), spec)
    full = open_database(args.db)
    own = set()  # indices (in the workload file) of this model's workloads
    lines = (args.db / "database_workload.json").read_text().splitlines()
    hashes = [json.loads(l)[0] for l in lines if l.strip()]
    for t in tasks:
        if full.has_workload(t.dispatched[0]):
            wl = full.commit_workload(t.dispatched[0])
            own.add(hashes.index(wl.as_json()[0]))
    all_lines = [l for l in (args.db / "database_tuning_record.json").read_text().splitlines() if l.strip()]
    if args.minutes:
        journal = [json.loads(l) for l in args.journal.read_text().splitlines() if l.strip()]
        points = []
        for m in args.minutes:
            lines = max([j["record_lines"] for j in journal if j["seconds"] <= 60 * m], default=0)
            points.append((f"{m:g} min", lines))
    else:
        points = [(f"{n} trials", n) for n in args.trials]
    rows = []
    x = np.random.default_rng(0).standard_normal(cfg.input_shape).astype("float32")
    for label, n in points:
        if args.minutes:  # the record file's first n lines, this model's among them
            records = [l for l in all_lines[:n] if json.loads(l)[0] in own]
        else:  # this model's first n records
            records = [l for l in all_lines if json.loads(l)[0] in own][:n]
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "db"
            db.mkdir()
            shutil.copy(args.db / "database_workload.json", db)
            # no record yet: an empty file (an empty line crashes MetaSchedule's JSON loader)
            (db / "database_tuning_record.json").write_text("".join(r + "\n" for r in records))
            art = compile_model(CompileOptions(cfg, spec, Path(tmp) / "art", tuning_log=db), progress=lambda m: None)
            sess = open_local(load_artifact(art.path))
            sess.time(x, number=10, repeat=3)
            t = sess.time(x, number=20, repeat=15)
            rows.append(
                {
                    "point": label,
                    "records_used": len(records),
                    "kernels_tuned": art.metadata["tuning"]["kernels_tuned"],
                    "kernels_total": art.metadata["tuning"]["kernels_total"],
                    "median_ms": t.median_ms,
                }
            )
            print(
                f"{label:>12} ({rows[-1]['records_used']} records): "
                f"{rows[-1]['kernels_tuned']}/{rows[-1]['kernels_total']} kernels tuned, median {t.median_ms:.3f} ms",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
