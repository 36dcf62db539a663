"""Selection speed and memory: every registered label-free one-shot selector against scikit-matter FPS and CUR.

Each strategy runs in a fresh child process (``--worker``), which builds the
same synthetic feature matrix and times one ``fit``; the parent reads the
child's own peak resident set size (``ru_maxrss`` from ``os.wait4``), so the
peak memory of one strategy is not hidden by another's. The peak includes the
feature matrix itself (N × d float64, built in row chunks so that it is the
only large array before the fit). Times are ratios to scikit-matter FPS
measured in the same run. Features are synthetic and structured like SOAP
pools (a low-rank mixture of clusters plus noise): real pools of 1e5
configurations do not ship with the repository. ``ggfps`` gets synthetic
force norms (a gamma distribution, eV/Å); ``i-optimal`` a target of
``--target-rows`` rows drawn from the same distribution.

    python benchmarks/selection.py                       # N = 1e5, d = 2000, k = 1000, all strategies
    python benchmarks/selection.py --sizes 10000 --only fps,d-optimal
    python benchmarks/selection.py --quick               # N = 2000, d = 200, k = 50, four strategies in-process (CI)

scikit-matter's CUR (and oed's ``cur``, which is scikit-matter's) recomputes a
singular vector after every pick, so its cost grows as N·d·k: ``--cur-picks``
picks (default 50) are timed and scaled linearly to k — each pick works on a
deflated matrix of the same size — and marked "extrapolated". A child that
runs past ``--limit`` seconds is stopped and recorded as skipped with that
lower bound, never silently dropped. Full runs write
``benchmarks/outputs/selection.json`` and ``selection.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GIB = 2.0**30
BASELINE = "skmatter-fps"
#: Strategies that are not registered oed selectors, run by name in the worker.
EXTERNAL = ("skmatter-fps", "skmatter-cur")
#: ``--quick`` (the CI test) runs only these unless ``--only`` says otherwise: one child each costs seconds.
QUICK = ("skmatter-fps", "fps", "ggfps", "d-optimal")
#: Registered selectors the benchmark does not run one-shot, and why.
NOT_ONE_SHOT: dict[str, str] = {}


def features(n: int, d: int, seed: int = 0, chunk: int = 8192) -> np.ndarray:
    """Synthetic SOAP-like pool (n, d): 32 clusters in a rank-64 latent space plus noise, built row-chunk-wise."""
    rng = np.random.default_rng(seed)
    rank = min(64, d)
    centres = rng.normal(size=(32, rank)) * 3.0
    mix = rng.normal(size=(rank, d)) / np.sqrt(rank)
    X = np.empty((n, d))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        latent = centres[rng.integers(0, 32, size=m)] + rng.normal(size=(m, rank))
        np.matmul(latent, mix, out=X[s : s + m])
        X[s : s + m] += 0.1 * rng.normal(size=(m, d))
    return X


def strategies() -> list[str]:
    """skmatter FPS (baseline), skmatter CUR, then every registered selector that selects without labels."""
    from oed.selectors import available, selector_class

    names = [n for n in available() if n not in NOT_ONE_SHOT]
    # info-gain takes labels only to fit its hyperparameters; without them it is label-free
    names = [n for n in names if not selector_class(n).uses_labels or n == "info-gain"]
    return [*EXTERNAL, *names]


# ----------------------------------------------------------------------------- child process
def worker(name: str, n: int, d: int, k: int, device: str, cur_picks: int, target_rows: int) -> dict:
    """Build the features, time one selection, return the result record (peak memory is read by the parent)."""
    import torch  # noqa: F401  (imported before the clock starts: oed's selectors import it lazily)

    X = features(n, d)
    rss_features = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    picks_run, note, kwargs = k, "", {}
    if name == "skmatter-fps":
        from skmatter.sample_selection import FPS

        def fit():
            return FPS(n_to_select=k, initialize=0).fit(X)
    elif name in ("skmatter-cur", "cur"):
        picks_run = min(k, cur_picks)
        if picks_run < k:
            note = f"extrapolated from {picks_run} picks"
        if name == "skmatter-cur":
            from skmatter.sample_selection import CUR

            def fit():
                return CUR(n_to_select=picks_run).fit(X)
        else:
            from oed.selectors import make_selector

            def fit():
                return make_selector("cur", picks_run, seed=0).fit(X)
    else:
        from oed.selectors import make_selector, selector_class

        cls = selector_class(name)
        params = {"device": device} if "device" in cls._get_param_names() else {}
        if name == "d-optimal":
            params["exchange"] = False  # the greedy design; exchange is timed separately if at all
        if name == "i-optimal":
            kwargs["X_target"] = features(target_rows, d, seed=1)
            note = f"target {target_rows} rows"
        if getattr(cls, "uses_force_norms", False):
            kwargs["force_norms"] = np.random.default_rng(2).gamma(2.0, 1.0, size=n)  # eV/Å, synthetic
            note = "synthetic force norms"
        sel = make_selector(name, k, seed=0, **params)

        def fit():
            return sel.fit(X, **kwargs)
    t0 = time.perf_counter()
    out = fit()
    seconds = time.perf_counter() - t0
    rec = {"strategy": name, "n": n, "d": d, "k": k, "picks_run": picks_run, "measured_seconds": seconds,
           "seconds": seconds * k / picks_run, "extrapolated": picks_run < k, "note": note,
           "features_gib": rss_features}
    picks = np.asarray(getattr(out, "selected_idx_", []))
    rec["picks"] = picks.tolist()[:k]
    return rec


def run_child(name: str, n: int, d: int, k: int, args) -> dict:
    """Run one strategy in a fresh process; its own peak RSS from ``os.wait4``; skipped past ``args.limit`` s."""
    cmd = [sys.executable, __file__, "--worker", name, "--n", str(n), "--d", str(d), "--k", str(k),
           "--device", args.device, "--cur-picks", str(args.cur_picks), "--target-rows", str(args.target_rows)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > args.limit:
            proc.kill()  # our own child, by its pid
            pid, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    wall = time.perf_counter() - t0
    peak = usage.ru_maxrss * 1024 / GIB  # Linux: kilobytes
    base = {"strategy": name, "n": n, "d": d, "k": k, "peak_gib": peak, "child_wall_s": wall}
    if timed_out:
        return {**base, "seconds": None, "skipped": f"exceeded the wall limit of {args.limit:.0f} s "
                                                    f"(time > {args.limit:.0f} s, not measured further)"}
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
        return {**base, "seconds": None, "skipped": f"failed: {tail}"}
    rec = json.loads(stdout.strip().splitlines()[-1])
    return {**rec, **base, "skipped": None}


def run_inline(name: str, n: int, d: int, k: int, args) -> dict:
    """One strategy in this process (``--quick``: no child start-up); peak RSS is this process's so far."""
    rec = worker(name, n, d, k, args.device, args.cur_picks, args.target_rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    return {**rec, "peak_gib": peak, "peak_is_cumulative": True, "skipped": None}


# ----------------------------------------------------------------------------- report
def annotate(rows: list[dict]) -> None:
    """Ratio to skmatter FPS (same run, same N) and whether the picks equal skmatter FPS's."""
    by_n: dict[int, dict] = {}
    for r in rows:
        by_n.setdefault(r["n"], {})[r["strategy"]] = r
    for group in by_n.values():
        base = group.get(BASELINE, {})
        t_base = base.get("seconds")
        for r in group.values():
            r["ratio_to_skmatter_fps"] = r["seconds"] / t_base if r.get("seconds") and t_base else None
            r["speedup_vs_skmatter_fps"] = t_base / r["seconds"] if r.get("seconds") and t_base else None
            r["skmatter_fps_seconds"] = t_base
        if "fps" in group and base.get("picks") and group["fps"].get("picks"):
            same = group["fps"]["picks"] == base["picks"]
            group["fps"]["note"] = "same picks as skmatter FPS" if same else "DIFFERENT picks from skmatter FPS"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Selection speed and peak memory",
        "",
        (f"Run {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs, load average at start "
         f"{meta['load_start']}), device {meta['device']}, torch threads {meta['torch_threads']}. "
         "Each strategy ran in its own process; peak GiB is that process's maximum resident set size "
         "(ru_maxrss), the N × d float64 feature matrix included. Ratio = seconds / scikit-matter FPS "
         "seconds in the same run (< 1 is faster). Built by `benchmarks/selection.py`"
         f" ({meta['command']})."),
        *[f"Rows added {m['date']} (load average {m['load_start']}) by `{m['command']}`." for m in meta.get("appended", [])],
        "",
        "| strategy | N | d | k | seconds | peak GiB | ratio to skmatter FPS | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        sec = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "–"
        ratio = f"{r['ratio_to_skmatter_fps']:.3f}" if r.get("ratio_to_skmatter_fps") is not None else "–"
        note = r.get("skipped") or r.get("note") or ""
        if r.get("extrapolated"):
            sec += " (extrap.)"
        lines.append(f"| {r['strategy']} | {r['n']} | {r['d']} | {r['k']} | {sec} | {r['peak_gib']:.2f} | "
                     f"{ratio} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for CI, all in this process (peak memory cumulative); writes nothing unless --out")
    parser.add_argument("--sizes", default="100000", help="comma-separated N")
    parser.add_argument("--d", type=int, default=2000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="", help="comma-separated strategies (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated strategies to leave out of this invocation")
    parser.add_argument("--limit", type=float, default=1800.0, help="wall seconds per strategy before it is skipped")
    parser.add_argument("--cur-picks", type=int, default=50, help="CUR picks timed; the time is scaled to k")
    parser.add_argument("--target-rows", type=int, default=1000, help="i-optimal target size")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default benchmarks/outputs/selection)")
    parser.add_argument("--append", action="store_true", help="merge into an existing JSON (other strategies kept)")
    parser.add_argument("--reuse-baseline", action="store_true",
                        help="with --append: take skmatter FPS from the JSON instead of timing it again "
                             "(ratios then compare invocations; noted per row)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        rec = worker(args.worker, args.n, args.d, args.k, args.device, args.cur_picks, args.target_rows)
        print(json.dumps(rec))
        return

    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.d, args.k, args.target_rows = 200, 50, 100
    names = [s for s in args.only.split(",") if s] or (QUICK if args.quick else strategies())
    out = args.out if args.out is not None else (None if args.quick else Path(__file__).parent / "outputs" / "selection")
    earlier = []  # baseline rows of an earlier invocation (--append --reuse-baseline)
    if args.append and args.reuse_baseline and out is not None and out.with_suffix(".json").exists():
        earlier = [r for r in json.loads(out.with_suffix(".json").read_text())["rows"]
                   if r["strategy"] == BASELINE and r["n"] in sizes and r.get("seconds")]
    if BASELINE not in names and not earlier:
        names.insert(0, BASELINE)  # the ratio needs the baseline measured in the same run
    names = [s for s in names if s not in set(args.skip.split(","))]

    import torch

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_start": " ".join(f"{v:.1f}" for v in os.getloadavg()), "device": args.device,
            "torch_threads": torch.get_num_threads(), "command": " ".join(["selection.py", *sys.argv[1:]])}
    print(f"device: {args.device}; d = {args.d}, k = {args.k}; ratio = time / skmatter FPS time (same run)")
    print(f"{'N':>7}  {'selector':<24} {'seconds':>9} {'peak GiB':>9} {'ratio':>7}  note", flush=True)
    json_path = md_path = None
    old = {"meta": None, "rows": []}
    if out is not None:
        json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        if args.append and json_path.exists():
            old = json.loads(json_path.read_text())

    def write(rows: list[dict]) -> None:
        """Outputs after every strategy, so a run stopped part-way keeps what it measured."""
        keep = {(r["strategy"], r["n"]) for r in rows}
        merged = [r for r in old["rows"] if (r["strategy"], r["n"]) not in keep]
        merged += [{key: v for key, v in r.items() if key != "picks"} for r in rows]
        m = meta
        if old["meta"] is not None:
            before = old["meta"].get("appended", [])
            m = {**old["meta"], "appended": [*([before] if isinstance(before, dict) else before), meta]}
        json_path.write_text(json.dumps({"meta": m, "rows": merged}, indent=1) + "\n")
        md_path.write_text(markdown(merged, m))

    rows: list[dict] = []
    for n in sizes:
        for name in names:
            r = (run_inline if args.quick else run_child)(name, n, args.d, args.k, args)
            rows.append(r)
            if earlier and name != BASELINE:
                r["note"] = (r.get("note") or "") + " (ratio to the skmatter FPS of an earlier invocation)"
            annotate(earlier + rows)
            label = "skmatter FPS (baseline)" if name == BASELINE else name
            ts = f"{r['seconds']:9.2f}" if r.get("seconds") is not None else f"{'–':>9}"
            ratio = r.get("ratio_to_skmatter_fps")
            rs = f"{ratio:7.2f}" if ratio is not None else f"{'–':>7}"
            note = r.get("skipped") or r.get("note") or ""
            print(f"{n:>7}  {label:<24} {ts} {r['peak_gib']:9.2f} {rs}  {note}", flush=True)
            if json_path is not None:
                write(rows)
    if json_path is not None:
        print(f"wrote {json_path} and {md_path}")

if __name__ == "__main__":
    main()
