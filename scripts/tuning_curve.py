"""Latency reached after N tuning trials: rebuild the model from the first N records of a
database (records are appended in measurement order) and time each build.

    python3 scripts/tuning_curve.py /path/to/full/x86 --alpha 0.5 --trials 250 500 1000 2000

Needs the *full* database (before `tvmnet prune-log`). Prints one row per N: records used,
kernels covered, median latency (time_evaluator, after warm-up).
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
    ap.add_argument("--target", default="x86")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from tvmnet import CompileOptions, ModelConfig, compile_model, load_target
    from tvmnet.artifact import load_artifact
    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline
    from tvmnet.runner import open_local
    from tvmnet.tuning import extract_tasks, open_database

    spec = load_target(args.target)
    cfg = ModelConfig(args.alpha, args.resolution)
    mod, *_ = import_model(cfg)
    tasks = extract_tasks(pipeline.lower_to_tir(mod, spec), spec)
    full = open_database(args.db)
    own = set()   # indices (in the workload file) of this model's workloads
    lines = (args.db / "database_workload.json").read_text().splitlines()
    hashes = [json.loads(l)[0] for l in lines if l.strip()]
    for t in tasks:
        if full.has_workload(t.dispatched[0]):
            wl = full.commit_workload(t.dispatched[0])
            own.add(hashes.index(wl.as_json()[0]))
    records = [l for l in (args.db / "database_tuning_record.json").read_text().splitlines()
               if l.strip() and json.loads(l)[0] in own]
    rows = []
    x = np.random.default_rng(0).standard_normal(cfg.input_shape).astype("float32")
    for n in args.trials:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "db"
            db.mkdir()
            shutil.copy(args.db / "database_workload.json", db)
            (db / "database_tuning_record.json").write_text("\n".join(records[:n]) + "\n")
            art = compile_model(CompileOptions(cfg, spec, Path(tmp) / "art", tuning_log=db), progress=lambda m: None)
            sess = open_local(load_artifact(art.path))
            sess.time(x, number=10, repeat=3)
            t = sess.time(x, number=20, repeat=15)
            rows.append({"trials": n, "records_used": min(n, len(records)),
                         "kernels_tuned": art.metadata["tuning"]["kernels_tuned"],
                         "kernels_total": art.metadata["tuning"]["kernels_total"], "median_ms": t.median_ms})
            print(f"{n:>6} trials ({rows[-1]['records_used']} records): "
                  f"{rows[-1]['kernels_tuned']}/{rows[-1]['kernels_total']} kernels tuned, median {t.median_ms:.3f} ms",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
