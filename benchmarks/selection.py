"""Selection speed: oed's greedy D-optimal and FPS against scikit-matter FPS and CUR.

All selectors run on the same feature matrix in one process; the table gives
wall times and the ratio to scikit-matter FPS (the named baseline), measured
in the same run. Features are synthetic and structured like SOAP pools (a
low-rank mixture of clusters plus noise): real pools of 1e5 configurations
do not ship with the repository.

    python benchmarks/selection.py              # N = 1e4, 3e4, 1e5; d = 2000; k = 1000
    python benchmarks/selection.py --quick      # seconds: N = 2000, d = 200, k = 50 (CI)
    python benchmarks/selection.py --device cuda

scikit-matter's CUR recomputes a singular vector after every pick, so its cost grows as N·d·k
(hours at N = 1e5, k = 1000): ``--cur-picks`` picks (default 50) are timed and scaled linearly
to k — the per-pick cost is constant, since each pick works on a deflated matrix of the same
size — and marked "extrapolated". Beyond ``--cur-max-n`` rows it is skipped.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def features(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rank = min(64, d)
    centres = rng.normal(size=(32, rank)) * 3.0
    latent = centres[rng.integers(0, 32, size=n)] + rng.normal(size=(n, rank))
    mix = rng.normal(size=(rank, d)) / np.sqrt(rank)
    return latent @ mix + 0.1 * rng.normal(size=(n, d))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(n: int, d: int, k: int, device: str, cur_max_n: int, cur_picks: int) -> list[tuple[str, float | None, str]]:
    from skmatter.sample_selection import CUR, FPS

    from oed.selectors import make_selector

    X = features(n, d)
    rows = []
    t_sk_fps, sk = timed(lambda: FPS(n_to_select=k, initialize=0).fit(X))
    rows.append(("skmatter FPS (baseline)", t_sk_fps, ""))
    t_fps, ours = timed(lambda: make_selector("fps", k, device=device).fit(X))
    same = np.array_equal(np.asarray(ours.selected_idx_), np.asarray(sk.selected_idx_))
    rows.append(("oed FPS", t_fps, "same picks" if same else "DIFFERENT picks"))
    t_d, dopt = timed(lambda: make_selector("d-optimal", k, reg=1.0, exchange=False, device=device).fit(X))
    rows.append(("oed greedy D-optimal", t_d, f"log det {dopt.log_det_:.1f}"))
    if n <= cur_max_n:
        # CUR recomputes a singular vector after every pick (about 0.6 s at N = 1e4, d = 2000 on
        # one core): the full k picks would take the run's hours, so time cur_picks and scale.
        m = min(k, cur_picks)
        t_cur, _ = timed(lambda: CUR(n_to_select=m).fit(X))
        rows.append(("skmatter CUR", t_cur * k / m, f"extrapolated from {m} picks" if m < k else ""))
    else:
        rows.append(("skmatter CUR", None, f"skipped (N > {cur_max_n})"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--sizes", default="10000,30000,100000", help="comma-separated N")
    parser.add_argument("--d", type=int, default=2000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cur-max-n", type=int, default=100000)
    parser.add_argument("--cur-picks", type=int, default=50, help="CUR picks timed; the time is scaled to k")
    args = parser.parse_args()
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    d, k = (200, 50) if args.quick else (args.d, args.k)

    from oed._torch import resolve_device

    device = str(resolve_device(args.device))
    print(f"device: {device}; d = {d}, k = {k}; ratio = time / skmatter FPS time (same run)")
    print(f"{'N':>7}  {'selector':<24} {'seconds':>9} {'ratio':>7}  note")
    for n in sizes:
        rows = run(n, d, k, device, args.cur_max_n, args.cur_picks)
        base = rows[0][1]
        for name, t, note in rows:
            ts = f"{t:9.2f}" if t is not None else f"{'–':>9}"
            ratio = f"{t / base:7.2f}" if t is not None else f"{'–':>7}"
            print(f"{n:>7}  {name:<24} {ts} {ratio}  {note}")


if __name__ == "__main__":
    main()
