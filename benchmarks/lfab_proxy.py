"""Does LFaB's proxy error rank the true error? One round on ethanol, against the GAP's own variance.

A GAP (``GAPSettings()``, rnd_seed 1) is fitted on ``--n-train`` random configurations of
``data/ethanol/train.xyz`` (PBE/def2-SVP labels, E0s from ``isolated_atoms.xyz``); ``--n-cand``
others are the candidates. For each candidate the script computes

- the LFaB proxy error (:meth:`loops.lfab.LFaBStrategy.score`: force RMS of the GAP against
  GFN2-xTB + a Δ-GAP fitted on PBE − xTB of the training set), eV/Å;
- the true force RMS error of the GAP against the candidate's PBE label, eV/Å;
- the GAP's predictive variance (what ``gap-variance`` ranks by), eV²;

and prints Spearman's ρ of proxy and variance against the true error, and the cheap-label cost.

    python benchmarks/lfab_proxy.py                 # 25 training, 200 candidates (~2 min on 2 cores)

Writes ``benchmarks/outputs/lfab_proxy.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from ase.io import read
    from scipy.stats import spearmanr

    from loops.gap import GAPModel, GAPSettings
    from loops.lfab import LFaBStrategy
    from loops.oracles import bare, e0s_from_file
    from loops.strategies import Features, RoundContext
    from oed.io import (
        REF_ENERGY,
        REF_FORCES,
        atomic_write_text,
        reference_energy,
        reference_forces,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=25)
    parser.add_argument("--n-cand", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = ROOT / "data" / "ethanol"
    frames = read(data / "train.xyz", ":")
    order = np.random.default_rng(args.seed).permutation(len(frames))
    train_idx = order[:args.n_train].tolist()
    cand = order[args.n_train:args.n_train + args.n_cand].tolist()
    pool = [bare(a, i) for i, a in enumerate(frames)]
    labels = {}
    for i in train_idx:
        a = bare(frames[i], i)
        a.info[REF_ENERGY], a.arrays[REF_FORCES] = reference_energy(frames[i]), reference_forces(frames[i])
        labels[i] = a
    e0s = e0s_from_file(data / "isolated_atoms.xyz", ["C", "H", "O"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = GAPModel(GAPSettings(rnd_seed=1)).fit(list(labels.values()), e0s=e0s, workdir=Path(tmp) / "m")
        t1 = time.perf_counter()
        ctx = RoundContext(pool=pool, labels=labels, e0s=e0s, seed=1, features=Features(pool), model=model)
        proxy, info = LFaBStrategy(run_dir=Path(tmp) / "run").score(cand, train_idx, ctx)
        t2 = time.perf_counter()
        _, forces = model.predict([pool[i] for i in cand])
        variance = model.predict_variance([pool[i] for i in cand])
        cost = info["cheap"].cost()
    true = np.array([np.sqrt(np.mean((f - reference_forces(frames[i])) ** 2)) for f, i in zip(forces, cand)])
    result = {
        "n_train": args.n_train, "n_candidates": len(cand), "seed": args.seed,
        "true_force_rms_mean_eV_per_A": float(true.mean()), "proxy_mean_eV_per_A": float(np.nanmean(proxy)),
        "spearman_proxy_true": float(spearmanr(proxy, true)[0]),
        "spearman_variance_true": float(spearmanr(variance, true)[0]),
        "median_proxy_over_true": float(np.median(proxy / true)),
        "cheap_labels": cost.n_labels, "cheap_seconds": cost.seconds,
        "fit_seconds": round(t1 - t0, 1), "score_seconds": round(t2 - t1, 1),
    }
    print(json.dumps(result, indent=1))
    atomic_write_text(ROOT / "benchmarks" / "outputs" / "lfab_proxy.json", json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
