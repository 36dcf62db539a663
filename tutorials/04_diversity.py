#!/usr/bin/env python
"""Tutorial 4 — structural vs conformational diversity at a fixed labelling budget.

Question (Shenoy et al., arXiv 2311.00862): with B labels to spend, is it better to label
many conformers of a few molecules or a few conformers of many molecules? Here B = 120 is
split as M molecules × C conformers (1×120, 4×30, 12×10, 40×3, 120×1), a GAP is fitted on
each design, and its errors are measured on

- ``seen_molecules``: new conformers of the molecules the design was trained on, and
- ``unseen_molecules``: conformers of 30 QM9 molecules that no design saw.

Molecules are QM9 equilibrium geometries holding C, H and O (every molecule has every
species, so that every design can predict every test molecule), at most 6 heavy atoms.
Conformers come from ANI-1's normal-mode sampling at 500 K (Smith, Isayev & Roitberg,
Chem. Sci. 8, 3192 (2017)) on the GFN2-xTB potential, and are labelled with GFN2-xTB
(Bannwarth, Ehlert & Grimme, JCTC 15, 1652 (2019)) through tblite. **GFN2-xTB is a cheap
stand-in for DFT**: the trends are the point, not the absolute numbers.

Run::

    python tutorials/04_diversity.py            # full run (~15 min on 2 busy cores), writes the committed outputs
    python tutorials/04_diversity.py --smoke --out /tmp/t4   # tiny version, well under a minute

Outputs in ``--out`` (default ``tutorials/outputs/04_diversity/``): ``results.csv`` (tidy),
``summary.md`` (built from results.csv alone by :func:`render_summary`), ``errors.png``.
Generated data (normal modes, labelled conformers, GAP fits) goes to ``OUT/work/``; each design
is fitted and scored as a one-round campaign (:func:`loops.campaign.train_on_design`) whose
finished cell is kept there, so a rerun after an interruption resumes.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, also when imported by path
from _shared import (  # noqa: E402
    ROOT,
    Design,
    cell,
    check_work_config,
    finish,
    fit_designs,
    label_xtb,
    mean_ci,
    parse_args,
    read_rows,
)

DEFAULT_OUT = ROOT / "tutorials" / "outputs" / "04_diversity"
COLUMNS = [
    "strategy", "seed", "budget", "molecules", "conformers_per_molecule",
    "test_set", "n_test", "metric", "value",
]  # fmt: skip
METRICS = {
    "energy_mae": "energy MAE (meV/atom)",
    "energy_rmse": "energy RMSE (meV/atom)",
    "force_mae": "force MAE (meV/Å)",
    "force_rmse": "force RMSE (meV/Å)",
}
TEST_SETS = {
    "seen_molecules": "new conformers of each design's own training molecules",
    "unseen_molecules": "conformers of molecules no design saw",
}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on."""

    designs: tuple[tuple[int, int], ...]  # (molecules, conformers per molecule)
    seeds: tuple[int, ...]
    n_unseen_molecules: int
    unseen_conformers: int  # per unseen molecule
    seen_test_total: int  # per design: ceil(seen_test_total / M) new conformers per molecule
    temperature_K: float
    max_heavy_atoms: int
    pool_seed: int
    gap: dict  # GAPSettings fields

    @property
    def n_pool(self) -> int:
        return max(m for m, _ in self.designs)


FULL = Config(
    designs=((1, 120), (4, 30), (12, 10), (40, 3), (120, 1)),
    seeds=(0, 1, 2),
    n_unseen_molecules=30,
    unseen_conformers=4,
    seen_test_total=60,
    temperature_K=500.0,
    max_heavy_atoms=6,
    pool_seed=2024,
    gap={"cutoff": 4.0, "n_max": 6, "l_max": 4, "n_sparse": 200},
)
SMOKE = replace(
    FULL,
    designs=((1, 8), (2, 4), (8, 1)),
    seeds=(0,),
    n_unseen_molecules=2,
    unseen_conformers=2,
    seen_test_total=4,
    max_heavy_atoms=4,
    gap={"cutoff": 4.0, "n_max": 4, "l_max": 3, "n_sparse": 50},
)


def design_name(molecules: int, conformers: int) -> str:
    return f"{molecules}x{conformers}"


# ------------------------------------------------------------------------------ data


def labelled_sets(cfg: Config, work: Path, workers: int | None):
    """Pool molecules, their normal modes and the labelled conformers of every seed (cached)."""
    from loops.conformers import qm9_molecules, xtb_normal_modes
    from oed.io import read_structures, write_structures

    molecules = qm9_molecules(
        cfg.n_pool + cfg.n_unseen_molecules,
        elements=("C", "H", "O"),
        required=("C", "H", "O"),
        max_heavy_atoms=cfg.max_heavy_atoms,
        seed=cfg.pool_seed,
    )
    modes = xtb_normal_modes(molecules, cache_dir=work / "modes", workers=workers)
    pool, unseen = modes[: cfg.n_pool], modes[cfg.n_pool :]

    unseen_file = work / "labels_unseen.xyz"
    if not unseen_file.is_file():
        frames = []
        for m in unseen:
            rng = np.random.default_rng([cfg.pool_seed, m.atoms.info["qm9_index"], 2])
            frames += m.sample(cfg.unseen_conformers, temperature_K=cfg.temperature_K, rng=rng)
        write_structures(unseen_file, label_xtb(frames, workers, "unseen-molecule conformers"))
    unseen_frames = read_structures(unseen_file)

    per_seed = {}
    for seed in cfg.seeds:
        path = work / f"labels_seed{seed}.xyz"
        order = np.random.default_rng([cfg.pool_seed, seed]).permutation(cfg.n_pool)
        if not path.is_file():
            frames = []
            for position, j in enumerate(order):
                m = pool[j]
                wanted = [(c, math.ceil(cfg.seen_test_total / mm)) for mm, c in cfg.designs if position < mm]
                n_train = max(c for c, _ in wanted)
                n_test = max(t for _, t in wanted)
                rng = np.random.default_rng([seed, m.atoms.info["qm9_index"]])
                confs = m.sample(n_train + n_test, temperature_K=cfg.temperature_K, rng=rng)
                for k, a in enumerate(confs):
                    a.info.update(
                        position=position,
                        role="train" if k < n_train else "test",
                        k=k if k < n_train else k - n_train,
                    )
                frames += confs
            write_structures(path, label_xtb(frames, workers, f"conformers of seed {seed}"))
        per_seed[seed] = read_structures(path)
    return per_seed, unseen_frames


def split_design(frames, molecules: int, conformers: int, seen_test_total: int):
    """Training and seen-molecule test frames of one design from a seed's labelled set."""
    per_mol_test = math.ceil(seen_test_total / molecules)
    mine = [a for a in frames if a.info["position"] < molecules]
    train = [a for a in mine if a.info["role"] == "train" and a.info["k"] < conformers]
    test = [a for a in mine if a.info["role"] == "test" and a.info["k"] < per_mol_test]
    return train, test


# ---------------------------------------------------------------------------- fitting


def run(cfg: Config, out: Path, workers: int | None) -> Path:
    from rich.console import Console

    from loops.gap import GAPSettings
    from loops.xtb import isolated_atom_energies_xtb
    from oed.io import write_structures

    console = Console()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    # the full GAP settings, not only the overrides: new library defaults must not reuse old fits
    check_work_config(cfg, work, gap_settings=asdict(GAPSettings(**cfg.gap)))
    t0 = time.perf_counter()
    console.print(f"[bold]Tutorial 4[/]: {len(cfg.designs)} designs × {len(cfg.seeds)} seeds → {out}")
    per_seed, unseen = labelled_sets(cfg, work, workers)
    unseen_file = work / "labels_unseen.xyz"
    console.print(f"  data ready in {time.perf_counter() - t0:.0f} s ({len(unseen)} unseen-molecule conformers)")
    e0s = isolated_atom_energies_xtb(["H", "C", "O"])

    def designs():
        for seed in cfg.seeds:
            for m, c in cfg.designs:
                name = design_name(m, c)
                train, seen_test = split_design(per_seed[seed], m, c, cfg.seen_test_total)
                seen_file = work / "tests" / f"seen_{name}_seed{seed}.xyz"
                if not seen_file.is_file():
                    write_structures(seen_file, seen_test)
                yield Design(name, seed, train, {"seen_molecules": seen_file, "unseen_molecules": unseen_file},
                             e0s, cfg.gap, work, {"strategy": name, "molecules": m, "conformers_per_molecule": c})

    return finish(out, fit_designs(designs(), METRICS), COLUMNS, render_summary, plot, t0)


# ------------------------------------------------------------------- summary and plot



def _stats(rows):
    """{(test_set, strategy, metric): (mean, half, n_seeds)} and the designs by molecule count."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    designs: dict[str, tuple[int, int, int]] = {}
    for r in rows:
        groups.setdefault((r["test_set"], r["strategy"], r["metric"]), []).append(r["value"])
        designs[r["strategy"]] = (r["molecules"], r["conformers_per_molecule"], r["budget"])
    stats = {k: (*mean_ci(v), len(v)) for k, v in groups.items()}
    order = sorted(designs, key=lambda s: designs[s][0])
    return stats, order, designs


def render_summary(results_csv) -> str:
    """summary.md's text, built from results.csv alone."""
    rows = read_rows(results_csv, ("seed", "budget", "molecules", "conformers_per_molecule", "n_test"))
    stats, order, designs = _stats(rows)
    seeds = sorted({r["seed"] for r in rows})
    budgets = sorted({r["budget"] for r in rows})
    n_test = {(r["test_set"], r["strategy"]): r["n_test"] for r in rows}
    out = [
        "# Tutorial 4 — structural vs conformational diversity at a fixed budget",
        "",
        f"Each design spends the same budget of {', '.join(map(str, budgets))} labelled conformers "
        "as M molecules × C conformers per molecule (QM9 molecules with C, H and O; conformers from "
        "normal-mode sampling; labels from GFN2-xTB, a cheap stand-in for DFT) and fits a GAP. "
        f"Errors: mean ± 95% confidence half-width (Student t, n − 1 dof) over {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}); energies in meV/atom, forces in meV/Å.",
        "",
    ]
    for test_set, words in TEST_SETS.items():
        if not any(k[0] == test_set for k in stats):
            continue
        sizes = sorted({n_test[(test_set, s)] for s in order if (test_set, s) in n_test})
        out += [f"## Test set `{test_set}`: {words}", ""]
        out.append(f"Test configurations per design: {', '.join(map(str, sizes))}.")
        out.append("")
        out.append("| design (M×C) | molecules | " + " | ".join(METRICS.values()) + " |")
        out.append("|---|---:|" + "---:|" * len(METRICS))
        for s in order:
            cells = [cell(*stats[(test_set, s, m)][:2]) for m in METRICS]
            out.append(f"| {s} | {designs[s][0]} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Conclusion", ""]
    for test_set, words in TEST_SETS.items():
        if not any(k[0] == test_set for k in stats):
            continue
        for metric, label in (("force_mae", "force MAE"), ("energy_mae", "energy MAE")):
            ranked = sorted(order, key=lambda s: stats[(test_set, s, metric)][0])
            best, worst = ranked[0], ranked[-1]
            mb, hb, _ = stats[(test_set, best, metric)]
            mw, hw, _ = stats[(test_set, worst, metric)]
            unit = "meV/Å" if metric.startswith("force") else "meV/atom"
            text = (
                f"- On {words} (`{test_set}`), **{best}** gives the lowest {label}: "
                f"{cell(mb, hb)} {unit}, against {cell(mw, hw)} {unit} for {worst} "
                f"({mw / mb:.1f}× higher)."
            )
            if len(ranked) > 1:
                second = ranked[1]
                m2, h2, _ = stats[(test_set, second, metric)]
                if hb is not None and h2 is not None and mb + hb >= m2 - h2:
                    text += f" The runner-up {second} ({cell(m2, h2)}) is within the 95% intervals."
            out.append(text)
    single = [s for s in order if designs[s][0] == 1]
    if single and ("unseen_molecules", single[0], "energy_mae") in stats:
        out.append(
            f"- Why {single[0]}'s energy error on new molecules is so large: energies of a single "
            "composition cannot tell how a total energy splits among the elements (any per-element "
            "shift that cancels over that one formula leaves every training energy unchanged), so on "
            "other formulas the split comes from the isolated-atom energies and the prior, not from "
            "data. Tutorial 5 shows the same for ethanol → methanol."
        )
    out.append("")
    out.append(
        "Note that `seen_molecules` is a different test set for each design (new conformers of its own "
        "molecules); `unseen_molecules` is the same set for all designs."
    )
    out.append("")
    best = {}
    for test_set in TEST_SETS:
        if any(k[0] == test_set for k in stats):
            best[test_set] = min(order, key=lambda s: stats[(test_set, s, "force_mae")][0])
    if len(best) == 2:
        seen, unseen = best["seen_molecules"], best["unseen_molecules"]
        if designs[seen][0] < designs[unseen][0]:
            out.append(
                f"In plain words: at this budget depth wins on the molecules a model was trained on "
                f"({seen}: many conformers of few molecules) and breadth wins on new molecules "
                f"({unseen}: many molecules, few conformers each). Which one to buy depends on whether "
                "the potential will meet new chemistry; a model that has seen one molecule knows "
                "nothing of the others, whatever the number of its conformers."
            )
        elif seen == unseen:
            out.append(f"In plain words: {seen} wins on both test sets at this budget.")
        else:
            out.append(
                f"In plain words: {seen} wins on the training molecules' conformers and {unseen} on new "
                "molecules; the more molecules, the better the transfer."
            )
        out.append("")
    return "\n".join(out)


def plot(results_csv, path) -> None:
    """Force and energy MAE against the design: mean, 95% CI and the single seeds."""
    import matplotlib

    from oed.plots import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = read_rows(results_csv, ("seed", "budget", "molecules", "conformers_per_molecule", "n_test"))
    stats, order, designs = _stats(rows)
    n_seeds = len({r["seed"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.8), constrained_layout=True)
    colours = {"seen_molecules": "tab:blue", "unseen_molecules": "tab:red"}
    x = np.array([designs[s][0] for s in order], dtype=float)
    for ax, metric in zip(axes, ("force_mae", "energy_mae")):
        floor = 0.5 * min(r["value"] for r in rows if r["metric"] == metric and r["value"] > 0)
        for test_set, words in TEST_SETS.items():
            if (test_set, order[0], metric) not in stats:
                continue
            colour = colours[test_set]
            means = np.array([stats[(test_set, s, metric)][0] for s in order])
            halves = np.array([stats[(test_set, s, metric)][1] or 0.0 for s in order])
            lower = means - np.maximum(means - halves, floor)  # an interval reaching below 0 stops at the floor
            ax.errorbar(x, means, yerr=[lower, halves], marker="o", ms=7, capsize=4, color=colour, label=words)
            for s, xi in zip(order, x):
                seeds = [r["value"] for r in rows if (r["strategy"], r["test_set"], r["metric"]) == (s, test_set, metric)]
                ax.scatter([xi * 1.06] * len(seeds), seeds, s=12, color=colour, alpha=0.45, linewidths=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x)
        ax.set_xticklabels([f"{designs[s][0]}×{designs[s][1]}" for s in order])
        ax.minorticks_off()
        ax.set_xlabel("design: molecules × conformers per molecule")
        ax.set_ylabel(METRICS[metric])
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    budget = sorted({r["budget"] for r in rows})
    fig.suptitle(
        f"GAP errors at a fixed budget of {', '.join(map(str, budget))} GFN2-xTB labels\n"
        f"mean and 95% CI over {n_seeds} seed(s); small dots: single seeds",
        fontsize=11,
    )
    save_figure(fig, path)


def main(argv=None) -> int:
    args, out = parse_args(__doc__, DEFAULT_OUT, argv, workers_help=(
        "processes for the xTB work (default: all cores; 1 with --smoke, where starting processes costs more)"))
    workers = args.workers if args.workers is not None else (1 if args.smoke else None)
    run(SMOKE if args.smoke else FULL, out.resolve(), workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
