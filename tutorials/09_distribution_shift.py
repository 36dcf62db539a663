#!/usr/bin/env python
"""Tutorial 9 — does a label-free shift diagnostic warn before deployment? (``oed shift`` against measured GAP errors)

Kreiman & Krishnapriyan (arXiv:2503.08674) describe three shifts between the training and test
systems of a force field — new atomic environments (feature), larger forces (force norm) and
unlike bonding graphs (connectivity) — all visible before a reference label of the test system
exists. ``oed shift`` computes them (:mod:`oed.shift`): the SOAP distance to the nearest training
environment and the extrapolation grade γ; the mean atomic |F| of GFN2-xTB (a cheap prior, for
training and test alike); the Wasserstein-1 distance of the normalised-Laplacian spectrum of the
5 Å radius graph to the nearest training graph. This tutorial asks two things of them:

A. **Flags.** ``oed shift`` with the full rMD17 ethanol pool (1000 configurations) as training set,
   on test_MD (in distribution) and on the out-of-distribution sets oed ships: the two
   normal-mode sets, H removal, methanol. Far fewer test_MD configurations should be flagged.
B. **Do the diagnostics predict error?** A GAP (``loops.gap.GAPSettings()``) fitted on 200 random
   pool configurations (3 seeds), scored per configuration on those sets; and a 3BPA GAP fitted
   on 200 configurations of ``train_300K`` (400 sparse points per species), scored on 100 other
   300 K frames (in distribution) and on up to 150 frames of ``train_mixedT`` not in
   ``train_300K`` (600 and 1200 K: hotter, out of distribution); and tutorial 5's QM9 GAP trained
   on molecules without a carbonyl (GFN2-xTB labels), scored on unseen molecules without and with
   one. Part C's MACE models are scored the same way. The diagnostics are computed against each
   model's own training set. Quoted: the Spearman ρ between each diagnostic and the force error,
   per configuration (pooled over a model's test sets, and within each set) and per file (each
   set's flagged fraction against its force MAE relative to the model's in-distribution MAE, over
   the sets with forces, for the GAPs and the MACEs; H removal has energies only).

C. **Test-time refinement** (no DFT label of a test configuration): a two-head MACE (DFT and
   GFN2-xTB heads on one representation, ``loops.ttt``) on 100 random ethanol configurations, and
   one on 100 ``train_300K`` 3BPA frames, 3 seeds each, scored as trained (``none``), with radius
   refinement (``radius``: each configuration's graph radius among 5.0 … 3.0 Å whose Laplacian
   spectrum is nearest a training graph) and with test-time training (``ttt``: Adam steps on the
   xTB head's loss for the test configurations) on the ethanol sets, test_300K and the hot frames.
   The same scoring is available on any comparison as ``oed compare --ttt --radius-refinement``.

Run::

    python tutorials/09_distribution_shift.py              # full run (about 2 h on 2 cores)
    python tutorials/09_distribution_shift.py --smoke --out /tmp/t9

Outputs in ``--out`` (default ``tutorials/outputs/09_distribution_shift/``): ``results.csv`` (tidy:
strategy, seed, budget, test_set, metric, value, refinement), ``per_config.csv`` (every test
configuration's errors and diagnostics), ``flagged.csv`` (part A), ``summary.md`` (rendered from
the three CSV files alone by :func:`render_summary`), ``shift.png`` (part A) and
``diagnostics_vs_error.png``; fits and xTB force norms are cached in ``OUT/work/``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, also when imported by path
from _shared import DATA, ROOT, methanol_test_file, parse_args  # noqa: E402

from oed.io import atomic_write_text  # noqa: E402

DEFAULT_OUT = ROOT / "tutorials" / "outputs" / "09_distribution_shift"
DIAGS = ("feature", "gamma", "force_norm", "connectivity")
N_TRAIN, N_SEEDS = 200, 3
N_BPA_ID, N_BPA_HOT = 100, 150
ETHANOL_SETS = ("test_MD", "test_norm_mode_874", "test_norm_mode_3005", "test_H_removal", "test_methanol")
ID_SETS = {"ethanol": "test_MD", "3bpa": "test_300K", "qm9": "without_carbonyl",
           "ethanol-mace": "test_MD", "3bpa-mace": "test_300K"}
FLAGS = (*(f"flag_{d}" for d in DIAGS), "flag_any")
PER_CONFIG_COLUMNS = ("system", "seed", "test_set", "index", "force_mae", "energy_error", *DIAGS, *FLAGS)
RESULT_COLUMNS = ("strategy", "seed", "budget", "test_set", "metric", "value", "refinement")


def _write_csv(path: Path, rows, columns) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def ethanol_test_files(work: Path) -> list[Path]:
    """Tutorial 1's test files, in :data:`ETHANOL_SETS` order (normal modes with PySCF forces)."""
    eth = DATA / "ethanol"
    return [eth / "test_MD.xyz", DATA / "ethanol_pyscf" / "test_norm_mode_874.xyz",
            DATA / "ethanol_pyscf" / "test_norm_mode_3005.xyz", eth / "test_H_removal.xyz", methanol_test_file(work)]


def ethanol_tests(work: Path, limit: int | None) -> dict[str, list]:
    from loops.cells import subsample
    from oed.io import read_structures

    paths = dict(zip(ETHANOL_SETS, ethanol_test_files(work)))
    sets = {name: read_structures(p) for name, p in paths.items()}
    if limit:
        sets = {name: subsample(frames, limit) if len(frames) > limit else frames for name, frames in sets.items()}
    return sets


def bpa_sets(work: Path, n_id: int, n_hot: int):
    """(300 K pool, 300 K test frames, hot test frames): disjoint, fixed by structure hash and subsample."""
    from loops.cells import subsample
    from oed.io import read_structures, structure_hash

    cold = read_structures(DATA / "3bpa" / "train_300K.xyz")
    cold_keys = {structure_hash(a) for a in cold}
    hot = [a for a in read_structures(DATA / "3bpa" / "train_mixedT.xyz") if structure_hash(a) not in cold_keys]
    test_id = subsample(cold, n_id)
    ids = {id(a) for a in test_id}
    pool = [a for a in cold if id(a) not in ids]
    return pool, test_id, subsample(hot, n_hot) if len(hot) > n_hot else hot


def cached_force_norms(frames, cache: Path):
    """GFN2-xTB mean atomic |F| per configuration (eV/Å), cached in ``cache`` (.npy)."""
    import numpy as np

    from loops.shift import force_norms

    if cache.exists():
        values = np.load(cache)
        if len(values) == len(frames):
            return values
    values = force_norms(frames, "gfn2-xtb", workers=1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, values)
    tmp.replace(cache)
    return values


def part_a(out: Path, *, smoke: bool) -> list[dict]:
    """Flagged fractions of each ethanol test set against the full pool (``loops.shift.shift_report``)."""
    from loops.shift import shift_report
    from oed.plots import plot_shift

    work = out / "work"
    cache = work / "part_a.json"
    if cache.exists():
        return json.loads(cache.read_text())
    work.mkdir(parents=True, exist_ok=True)
    train = DATA / "ethanol" / "train.xyz"
    tests = ethanol_test_files(work)
    if smoke:
        from oed.io import read_structures, write_structures

        small = work / "train_smoke.xyz"
        write_structures(small, read_structures(train)[:30])
        train = small
        cut = []
        for p in tests:
            q = work / f"{p.stem}.xyz" if p.parent != work else work / f"{p.stem}_smoke.xyz"
            write_structures(q, read_structures(p)[:6])
            cut.append(q)
        tests = cut
    t = time.perf_counter()
    report, results = shift_report(train, tests, forces="gfn2-xtb", workers=1)
    seconds = time.perf_counter() - t
    plot_shift(results, out / "shift.png", title=f"oed shift against {train.name} ({report['n_train']} configurations)")
    rows = [{"test_set": name.removesuffix("_smoke"), "n": f["n"], "diagnostic": d, "flagged_fraction": repr(v),
             "threshold": repr(report["thresholds"].get(d)), "seconds": f"{seconds:.1f}"}
            for name, f in report["files"].items() for d, v in f["flagged_fraction"].items()]
    atomic_write_text(cache, json.dumps(rows))
    return rows


def _per_config_errors(frames, energies, forces) -> tuple[list, list]:
    """Force MAE (meV/Å) and |energy error| (meV/atom) per configuration; None where unlabelled."""
    import numpy as np

    from oed.io import reference_energy, reference_forces

    f_err, e_err = [], []
    for a, e, f in zip(frames, energies, forces):
        ref_f, ref_e = reference_forces(a), reference_energy(a)
        f_err.append(None if ref_f is None else 1000.0 * float(np.mean(np.abs(np.asarray(f) - ref_f))))
        e_err.append(None if ref_e is None else 1000.0 * abs(float(e) - ref_e) / len(a))
    return f_err, e_err


#: A smaller SOAP for the diagnostics of a smoke run (the default has ~3700 features per 3BPA atom).
SMOKE_SOAP = {"n_max": 3, "l_max": 2}


def part_b_system(system: str, train, tests: dict, e0s: dict, gap, work: Path, seed: int,
                  soap: dict | None = None) -> list[dict]:
    """Fit one GAP, score each configuration, compute its diagnostics against the GAP's training set."""

    from loops.models import make_model
    from oed.descriptors import SOAPDescriptor
    from oed.shift import ShiftDiagnostics

    cell = work / system / f"seed{seed}"
    done = cell / "per_config.json"
    if done.exists():
        return json.loads(done.read_text())
    cell.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    model = make_model("gap", gap, seed=seed).fit(train, e0s=e0s, workdir=cell / "model")
    print(f"  {system} seed {seed}: GAP on {len(train)} configurations in {time.perf_counter() - t:.0f} s", flush=True)
    species = sorted({s for frames in [train, *tests.values()] for a in frames for s in a.get_chemical_symbols()})
    diag = ShiftDiagnostics(descriptor=SOAPDescriptor(species=species, **(soap or {})))
    diag.fit(train, force_norms=cached_force_norms(train, cell / "train_xtb_norms.npy"))
    rows = []
    for name, frames in tests.items():
        f_err, e_err = _per_config_errors(frames, *model.predict(frames))
        res = diag.score(frames, force_norms=cached_force_norms(frames, work / system / f"{name}_xtb_norms.npy"))
        rows += _config_rows(system, seed, name, f_err, e_err, res)
    atomic_write_text(done, json.dumps(rows))
    print(f"  {system} seed {seed}: scored and diagnosed in {time.perf_counter() - t:.0f} s", flush=True)
    return rows


def _config_rows(system: str, seed: int, name: str, f_err, e_err, res) -> list[dict]:
    """per_config.csv rows of one test set: errors, diagnostic values and flags (a ShiftResult)."""
    import numpy as np

    anyflag = np.any(np.stack(list(res.flagged.values())), axis=0)
    flags = {f"flag_{d}": res.flagged[d] for d in DIAGS}
    return [{"system": system, "seed": seed, "test_set": name, "index": i,
             "force_mae": "" if f_err[i] is None else repr(f_err[i]),
             "energy_error": "" if e_err[i] is None else repr(e_err[i]),
             **{d: repr(float(res.values[d][i])) for d in DIAGS},
             **{k: int(v[i]) for k, v in flags.items()}, "flag_any": int(anyflag[i])}
            for i in range(len(f_err))]


def part_b(out: Path, *, smoke: bool) -> list[dict]:
    import numpy as np

    from loops.gap import GAPSettings
    from loops.oracles import e0s_from_file
    from oed.io import read_structures

    work = out / "work"
    n_train, seeds = (20, 1) if smoke else (N_TRAIN, N_SEEDS)
    small = GAPSettings(n_max=4, l_max=3, n_sparse=30) if smoke else None
    eth_pool = read_structures(DATA / "ethanol" / "train.xyz")
    eth_tests = ethanol_tests(work, 5 if smoke else 200)
    bpa_pool, bpa_id, bpa_hot = bpa_sets(work, 5 if smoke else N_BPA_ID, 5 if smoke else N_BPA_HOT)
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        eth_train = [eth_pool[i] for i in np.sort(rng.choice(len(eth_pool), n_train, replace=False))]
        rows += part_b_system("ethanol", eth_train, eth_tests,
                              e0s_from_file(DATA / "ethanol" / "isolated_atoms.xyz", ["H", "C", "O"]),
                              small or GAPSettings(), work, seed, SMOKE_SOAP if smoke else None)
        bpa_train = [bpa_pool[i] for i in np.sort(rng.choice(len(bpa_pool), min(n_train, len(bpa_pool)), replace=False))]
        rows += part_b_system("3bpa", bpa_train, {"test_300K": bpa_id, "test_hot": bpa_hot},
                              e0s_from_file(DATA / "3bpa" / "iso_atoms.xyz", ["H", "C", "N", "O"]),
                              small or GAPSettings(n_sparse=400), work, seed, SMOKE_SOAP if smoke else None)
        qm9_train, qm9_tests, qm9_e0s, qm9_gap = qm9_sets(work, seed, smoke=smoke)
        rows += part_b_system("qm9", qm9_train, qm9_tests, qm9_e0s, small or qm9_gap, work, seed,
                              SMOKE_SOAP if smoke else None)
    return rows


def qm9_sets(work: Path, seed: int, *, smoke: bool):
    """Tutorial 5's held-out QM9 experiment (b): training conformers of molecules without a carbonyl
    (``holdout``), test conformers of unseen molecules without and with one; GFN2-xTB labels."""
    import importlib.util

    from loops.gap import GAPSettings
    from loops.xtb import isolated_atom_energies_xtb
    from oed.io import read_structures

    t5 = sys.modules.get("tutorial05")
    if t5 is None:
        spec = importlib.util.spec_from_file_location("tutorial05", Path(__file__).with_name("05_composition.py"))
        t5 = sys.modules["tutorial05"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(t5)
    cfg = t5.SMOKE if smoke else t5.FULL
    per_seed, test_paths = t5.carbonyl_data(cfg, work / "qm9_data", workers=1)
    train = t5.carbonyl_train(per_seed[seed], "holdout", cfg.n_train_molecules, seed)
    tests = {name: read_structures(path) for name, path in test_paths.items()}
    return train, tests, isolated_atom_energies_xtb(["H", "C", "O"]), GAPSettings(**cfg.gap_qm9)


def tidy_results(per_config: list[dict], n_train: int) -> list[dict]:
    """results.csv rows: per (system, seed, test set) force and energy MAE of the random-200 GAP."""
    import numpy as np

    out = []
    keys = sorted({(r["system"], int(r["seed"]), r["test_set"]) for r in per_config})
    for system, seed, test_set in keys:
        rs = [r for r in per_config if r["system"] == system and int(r["seed"]) == seed and r["test_set"] == test_set]
        for metric, col in (("force_mae", "force_mae"), ("energy_mae", "energy_error")):
            vals = [float(r[col]) for r in rs if r[col] not in ("", None)]
            if vals:
                out.append({"strategy": f"{system}/random", "seed": seed, "budget": n_train, "test_set": test_set,
                            "metric": metric, "value": repr(float(np.mean(vals))), "refinement": "none"})
    return out


def _spearman(x, y) -> float:
    import numpy as np
    from scipy.stats import spearmanr

    # ranks only: an infinite value (an unseen element) ranks above every finite one
    x = np.nan_to_num(np.asarray(x, float), nan=np.nan, posinf=np.finfo(float).max)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def correlation_tables(per_config: list[dict]) -> str:
    """Markdown: ρ(diagnostic, force error) per configuration (pooled and within sets) and per file."""
    import numpy as np

    lines = ["## B. Do the diagnostics predict the error?\n",
             "Spearman ρ between each diagnostic and the model's force MAE of each configuration (GAP: part B's "
             "200-configuration fits, QM9: tutorial 5's `holdout` GAP on GFN2-xTB labels; MACE: part C's unrefined "
             "two-head models, 100 configurations; diagnostics against each model's own training set; mean over seeds; "
             "infinite values rank highest). *Pooled*: all test configurations of one model together; *within*: "
             "the mean of the ρ inside each test set.\n",
             "| model | configurations | " + " | ".join(DIAGS) + " |", "|---|---|" + "---:|" * len(DIAGS)]
    systems = sorted({r["system"] for r in per_config})
    for system in systems:
        rs = [r for r in per_config if r["system"] == system and r["force_mae"] not in ("", None)]
        seeds = sorted({int(r["seed"]) for r in rs})
        pooled = {d: [] for d in DIAGS}
        within = {d: [] for d in DIAGS}
        for s in seeds:
            rs_s = [r for r in rs if int(r["seed"]) == s]
            for d in DIAGS:
                pooled[d].append(_spearman([float(r[d]) for r in rs_s], [float(r["force_mae"]) for r in rs_s]))
                per_set = []
                for t in sorted({r["test_set"] for r in rs_s}):
                    sub = [r for r in rs_s if r["test_set"] == t]
                    per_set.append(_spearman([float(r[d]) for r in sub], [float(r["force_mae"]) for r in sub]))
                within[d].append(np.nanmean(per_set) if np.isfinite(per_set).any() else np.nan)
        def mean(v):
            return np.nanmean(v) if np.isfinite(v).any() else np.nan

        for label, values in (("pooled", pooled), ("within sets", within)):
            lines.append(f"| {system} | {label} | " + " | ".join(_fmt(mean(values[d])) for d in DIAGS) + " |")
    lines.append("")
    # per file: flagged fraction vs force MAE relative to the model's in-distribution MAE
    files = []
    for system in systems:
        rs = [r for r in per_config if r["system"] == system]
        for t in sorted({r["test_set"] for r in rs}):
            sub = [r for r in rs if r["test_set"] == t]
            f = [float(r["force_mae"]) for r in sub if r["force_mae"] not in ("", None)]
            if not f:
                continue
            idf = [float(r["force_mae"]) for r in rs if r["test_set"] == ID_SETS[system]]
            files.append({"system": system, "test_set": t, "ratio": float(np.mean(f) / np.mean(idf)),
                          "mae": float(np.mean(f)), "sub": sub})
    lines += ["Per file: the share of each set's configurations that each diagnostic flags (against the model's "
              "own training set, so comparable across models), against the set's force MAE relative to the same "
              "model's in-distribution MAE (means over seeds).\n",
              "| model | test set | force MAE (meV/Å) | / in-distribution | " + " | ".join(FLAGS) + " |",
              "|---|---|---:|---:|" + "---:|" * len(FLAGS)]
    shares = {k: [] for k in FLAGS}
    for f in files:
        share = {k: float(np.mean([int(r[k]) for r in f["sub"]])) for k in FLAGS}
        for k in FLAGS:
            shares[k].append(share[k])
        lines.append(f"| {f['system']} | {f['test_set']} | {f['mae']:.1f} | {f['ratio']:.2f} | "
                     + " | ".join(f"{share[k]:.2f}" for k in FLAGS) + " |")
    lines.append("")
    for family, keep in (("GAP", lambda f: not f["system"].endswith("-mace")),
                         ("MACE", lambda f: f["system"].endswith("-mace")), ("all", lambda f: True)):
        idx = [i for i, f in enumerate(files) if keep(f)]
        if len(idx) < 3:
            continue
        ratios = [files[i]["ratio"] for i in idx]
        lines.append(f"Spearman ρ over the {len(idx)} {family if family != 'all' else 'GAP and MACE'} sets between "
                     "the flagged share and the error ratio: "
                     + "; ".join(f"{k.removeprefix('flag_')} **{_fmt(_spearman([shares[k][i] for i in idx], ratios))}**"
                                 for k in FLAGS) + ".\n")
    lines.append("Goal (issue 14): ≥ 0.7 for at least one diagnostic.\n")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    import math

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def flagged_table(flagged: list[dict]) -> str:
    names = list(dict.fromkeys(r["test_set"] for r in flagged))
    diags = list(dict.fromkeys(r["diagnostic"] for r in flagged))
    get = {(r["test_set"], r["diagnostic"]): float(r["flagged_fraction"]) for r in flagged}
    n = {r["test_set"]: r["n"] for r in flagged}
    lines = ["| test set | n | " + " | ".join(diags) + " |", "|---|---:|" + "---:|" * len(diags)]
    for t in names:
        lines.append(f"| {t} | {n[t]} | " + " | ".join(f"{100 * get[(t, d)]:.0f} %" for d in diags) + " |")
    return "\n".join(lines) + "\n"


def render_summary(results_csv: str | Path) -> str:
    """summary.md from results.csv, per_config.csv and flagged.csv (next to it) alone."""
    folder = Path(results_csv).parent
    flagged = _read_csv(folder / "flagged.csv")
    per_config = _read_csv(folder / "per_config.csv")
    seconds = flagged[0]["seconds"] if flagged else "?"
    return "\n".join([
        "# Tutorial 9 — does a label-free shift diagnostic warn before deployment?\n",
        "## A. `oed shift` on ethanol: share of configurations flagged\n",
        f"Training set: the rMD17 ethanol pool ({DATA.name}/ethanol/train.xyz); force norms from GFN2-xTB for "
        f"training and test alike; thresholds one training standard deviation above the training mean "
        f"(γ: above 2). Wall time {seconds} s on 2 shared cores, xTB included.\n",
        flagged_table(flagged),
        correlation_tables(per_config),
        refinement_table(_read_csv(folder / "results.csv")),
    ]).rstrip() + "\n"


def plot_diagnostics(per_config: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from oed.plots import save_figure

    rows = [r for r in per_config if r["force_mae"] not in ("", None) and int(r["seed"]) == 0]
    systems = [s for s in ("ethanol", "3bpa", "qm9", "ethanol-mace", "3bpa-mace") if any(r["system"] == s for r in rows)]
    fig, axes = plt.subplots(len(systems), len(DIAGS), figsize=(4 * len(DIAGS), 3.4 * len(systems)),
                             constrained_layout=True, squeeze=False)
    for row_ax, system in zip(axes, systems):
        rs = [r for r in rows if r["system"] == system]
        for ax, d in zip(row_ax, DIAGS):
            for k, t in enumerate(sorted({r["test_set"] for r in rs})):
                sub = [r for r in rs if r["test_set"] == t]
                x = np.array([float(r[d]) for r in sub])
                y = np.array([float(r["force_mae"]) for r in sub])
                ok = np.isfinite(x)
                ax.scatter(x[ok], y[ok], s=6, alpha=0.5, color=f"C{k}", label=t)
            ax.set_yscale("log")
            if d == "gamma":
                ax.set_xscale("log")
            ax.set_xlabel(d)
            ax.set_ylabel(f"{system.removesuffix('-mace')} {'MACE' if system.endswith('-mace') else 'GAP'} "
                          "force MAE (meV/Å)")
            ax.grid(True, alpha=0.3)
        row_ax[0].legend(fontsize=7, markerscale=2)
    fig.suptitle("Shift diagnostics against the model's force error, per configuration (seed 0)")
    save_figure(fig, path)


# ------------------------------------------------------------------ part C: refinement
MACE_TRAIN, MACE_EPOCHS = 100, 100
RR_RADII = (5.0, 4.5, 4.0, 3.5, 3.0)
REFINEMENTS = ("none", "radius", "ttt")


def mace_systems(out: Path, *, smoke: bool) -> dict:
    """Part C's systems: name -> (pool, tests, e0s, species, work folder)."""
    from loops.oracles import e0s_from_file
    from oed.io import read_structures

    systems = {
        "ethanol": (read_structures(DATA / "ethanol" / "train.xyz"), ethanol_tests(out / "work", 4 if smoke else 200),
                    e0s_from_file(DATA / "ethanol" / "isolated_atoms.xyz", ["H", "C", "O"]), ["H", "C", "O"],
                    out / "work" / "mace"),
    }
    if smoke:  # one system runs the same code path; 3BPA's MACE took 45 of the smoke run's 126 s
        return systems
    bpa_pool, bpa_id, bpa_hot = bpa_sets(out / "work", N_BPA_ID, N_BPA_HOT)
    systems["3bpa"] = (bpa_pool, {"test_300K": bpa_id, "test_hot": bpa_hot},
                       e0s_from_file(DATA / "3bpa" / "iso_atoms.xyz", ["H", "C", "N", "O"]), ["H", "C", "N", "O"],
                       out / "work" / "mace_3bpa")
    return systems


def part_c(out: Path, *, smoke: bool) -> tuple[list[dict], list[dict]]:
    """Two-head MACE (DFT + GFN2-xTB prior) per system, scored without refinement, with radius
    refinement and with test-time training: (tidy rows with the ``refinement`` column, per-configuration
    rows of the unrefined MACE with its diagnostics, as part B's)."""
    rows, per_config = [], []
    for system, (pool, tests, e0s, species, work) in mace_systems(out, smoke=smoke).items():
        for seed in range(1 if smoke else N_SEEDS):
            seed_rows, seed_config = part_c_cell(system, pool, tests, e0s, species, work / f"seed{seed}", seed,
                                                 smoke=smoke)
            rows += seed_rows
            per_config += seed_config
    return rows, per_config


def part_c_cell(system: str, pool, tests: dict, e0s: dict, species, cell: Path, seed: int, *, smoke: bool):
    """One system and seed of part C (cached in ``cell``: the pickled model, rows.json, per_config.json)."""
    import pickle

    import numpy as np

    from loops.mace import MACESettings
    from loops.ttt import TTTMACEModel, TTTSettings
    from oed.descriptors import SOAPDescriptor
    from oed.shift import ShiftDiagnostics, refined_radii

    n_train = 12 if smoke else MACE_TRAIN
    settings = MACESettings(max_num_epochs=4 if smoke else MACE_EPOCHS, num_channels=8 if smoke else 16)
    rng = np.random.default_rng(1000 + seed)
    train = [pool[i] for i in np.sort(rng.choice(len(pool), n_train, replace=False))]
    done, done_config = cell / "rows.json", cell / "per_config.json"
    if done.exists() and done_config.exists():
        return json.loads(done.read_text()), json.loads(done_config.read_text())
    saved = cell / "model.pkl"  # the fitted model (its torch module reloads from its file)
    if saved.exists():
        model = pickle.loads(saved.read_bytes())
    else:
        t = time.perf_counter()
        model = TTTMACEModel(settings, TTTSettings()).fit(train, e0s=e0s, workdir=cell / "model")
        print(f"  {system} MACE (two heads) seed {seed}: {len(train)} configurations in {time.perf_counter() - t:.0f} s",
              flush=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(model))
        tmp.replace(saved)
    diag = ShiftDiagnostics(descriptor=SOAPDescriptor(species=species, **(SMOKE_SOAP if smoke else {})),
                            cutoff=settings.r_max)
    strategy = f"{system}-mace/random"
    if not done.exists():
        diag.fit(train)
        seed_rows = []
        for name, frames in tests.items():
            radii = refined_radii(diag, frames, RR_RADII)
            predictions = {"none": model.predict(frames), "radius": model.predict(frames, cutoffs=radii),
                           "ttt": model.predict_ttt(frames)}
            ttt_s = model.ttt_seconds_  # per configuration, its xTB labels included
            for refinement, (energies, forces) in predictions.items():
                f_err, e_err = _per_config_errors(frames, energies, forces)
                for metric, values in (("force_mae", [x for x in f_err if x is not None]),
                                       ("energy_mae", [x for x in e_err if x is not None])):
                    if values:
                        seed_rows.append({"strategy": strategy, "seed": seed, "budget": n_train,
                                          "test_set": name, "metric": metric, "value": repr(float(np.mean(values))),
                                          "refinement": refinement})
            seed_rows.append({"strategy": strategy, "seed": seed, "budget": n_train, "test_set": name,
                              "metric": "radius_changed", "value": repr(float(np.mean(radii < settings.r_max))),
                              "refinement": "radius"})
            seed_rows.append({"strategy": strategy, "seed": seed, "budget": n_train, "test_set": name,
                              "metric": "seconds_per_config", "value": repr(ttt_s), "refinement": "ttt"})
        atomic_write_text(done, json.dumps(seed_rows))
    # the diagnostics against the MACE's own training set, beside its per-configuration errors (part B's table)
    diag.fit(train, force_norms=cached_force_norms(train, cell / "train_xtb_norms.npy"))
    seed_config = []
    for name, frames in tests.items():
        f_err, e_err = _per_config_errors(frames, *model.predict(frames))
        norms = cached_force_norms(frames, cell.parent / f"{name}_xtb_norms.npy")
        seed_config += _config_rows(f"{system}-mace", seed, name, f_err, e_err, diag.score(frames, force_norms=norms))
    atomic_write_text(done_config, json.dumps(seed_config))
    return json.loads(done.read_text()), seed_config


def refinement_table(rows: list[dict]) -> str:
    """Markdown: force MAE without and with each refinement, the change, per test set (means over seeds)."""
    import numpy as np

    mace = [r for r in rows if r["strategy"].endswith("mace/random")]
    if not mace:
        return ""
    seeds = sorted({int(r["seed"]) for r in mace})
    lines = ["## C. Test-time refinement of MACE (no DFT label of a test configuration)\n",
             f"Two-head MACE (DFT and GFN2-xTB heads on one representation, {MACE_EPOCHS} epochs) on "
             f"{MACE_TRAIN} random configurations (ethanol: the rMD17 pool; 3BPA: `train_300K` frames not "
             f"in test_300K), {len(seeds)} seed(s); mean ± 95 % interval over seeds "
             "of the force MAE (meV/Å; H removal: energy MAE, meV/atom). *radius*: per configuration the graph radius "
             f"among {', '.join(map(str, RR_RADII))} Å whose Laplacian spectrum is nearest a training graph; *ttt*: "
             "10 Adam steps (lr 1e-3) on the xTB head's loss per batch of 8 test configurations. Change: paired by "
             "seed, (refined − none) / none. Goal (issue 14): TTT ≥ 20 % lower on two OOD sets, the in-distribution "
             "set (test_MD, test_300K) within 5 %.\n",
             "| model | test set | none | radius | change | ttt | change | radius changed | TTT s/config |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    from _shared import cell, mean_ci

    for strategy, test_set in list(dict.fromkeys((r["strategy"], r["test_set"]) for r in mace)):
        mine = [r for r in mace if r["strategy"] == strategy]
        metric = "force_mae" if any(r["test_set"] == test_set and r["metric"] == "force_mae" for r in mine) \
            else "energy_mae"

        def values(refinement, m=metric, t=test_set, rs=mine):
            return {int(r["seed"]): float(r["value"]) for r in rs
                    if r["test_set"] == t and r["metric"] == m and r["refinement"] == refinement}

        base = values("none")
        cells = [strategy.removesuffix("-mace/random") + " MACE", test_set + ("" if metric == "force_mae" else " (energy)"),
                 cell(*mean_ci(base.values()))]
        for refinement in ("radius", "ttt"):
            v = values(refinement)
            change = [100.0 * (v[s] - base[s]) / base[s] for s in base if s in v]
            mean, half = mean_ci(change)
            cells += [cell(*mean_ci(v.values())), f"{mean:+.1f} %" + ("" if half is None else f" ± {half:.1f}")]
        cells.append(f"{np.mean(list(values('radius', 'radius_changed').values())):.2f}")
        cells.append(f"{np.mean(list(values('ttt', 'seconds_per_config').values())):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args, out = parse_args(__doc__, DEFAULT_OUT, argv)
    t0 = time.perf_counter()
    (out / "work").mkdir(parents=True, exist_ok=True)
    print("== A. oed shift on the ethanol test sets", flush=True)
    flagged = part_a(out, smoke=args.smoke)
    _write_csv(out / "flagged.csv", flagged, ("test_set", "n", "diagnostic", "flagged_fraction", "threshold", "seconds"))
    print("== B. diagnostics against GAP errors", flush=True)
    per_config = part_b(out, smoke=args.smoke)
    _write_csv(out / "per_config.csv", per_config, PER_CONFIG_COLUMNS)
    print("== C. test-time refinement of MACE", flush=True)
    refined, mace_config = part_c(out, smoke=args.smoke)
    gap_rows = tidy_results(per_config, 20 if args.smoke else N_TRAIN)
    per_config += mace_config
    _write_csv(out / "per_config.csv", per_config, PER_CONFIG_COLUMNS)
    _write_csv(out / "results.csv", gap_rows + refined, RESULT_COLUMNS)
    atomic_write_text(out / "summary.md", render_summary(out / "results.csv"))
    plot_diagnostics(_read_csv(out / "per_config.csv"), out / "diagnostics_vs_error.png")
    print(f"tutorial 9 finished in {time.perf_counter() - t0:.0f} s → {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
