"""Bias-aware selection with a cheap oracle (LFaB): pick where the model is wrong, in representative batches.

Vinod & Zaspel (arXiv:2508.15577, "LFaB") select the training points of a fidelity-expensive
target where a cheap low-fidelity surface says the current model is most wrong: bias, not
variance. In oed (:class:`LFaBStrategy`, strategy names :data:`LFAB_VARIANTS`):

1. every candidate and every labelled configuration gets a cheap label c(x) — GFN2-xTB
   through tblite (:class:`loops.cheap.CheapLabels`, ~8 ms per ethanol against ~8 s for a
   PBE/def2-SVP label), stored apart from the DFT labels and charged to the strategy;
2. a Δ-model, a GAP with the run model's settings (:mod:`loops.gap`), is fitted to the
   differences DFT − cheap of the labelled configurations (energies and forces), so that
   c(x) + Δ(x) estimates the DFT surface at every candidate;
3. the proxy error of candidate x is the disagreement between the direct model M(x) (the GAP
   trained on the DFT labels so far, ``ctx.model``) and c(x) + Δ(x): the RMS over the 3N force
   components of their force difference (eV/Å; ``error="energy"``: |ΔE| per atom, eV/atom).
   Where the cheap surface is exact up to a constant (Δ has zero forces), it *is* M's force
   error against the oracle;
4. a batch covers the *error mass*, not only its maxima: k-means in summed-SOAP space with
   sample weights = proxy error² (``batch="kmeans"``), the largest-error candidate of each
   cluster picked. The test error is an average over the target distribution, so the picks
   should be spread as density × error², where the k largest errors (``batch="top"``) crowd
   into one region: measured on the i.i.d. ethanol pool, picking purely by the largest error
   lost to random.

A candidate whose cheap label failed has no proxy error: it is left out of the clustering and
the ranking, and is picked only by the fill-up (largest remaining errors first, then the
unscored in a seeded random order) when fewer than k scored picks exist.

Per round the strategy writes ``selections/<label>/seed<s>.cheap.json`` (atomically): the picks,
their proxy errors, a summary of the candidates' errors, the Δ-model's training size and the
cheap-label accounting, cumulative over the campaign (:meth:`LFaBStrategy.cheap_cost`, which
``oed compare`` puts into each cell record and ``cheap_cost.csv``).

:class:`ForceNormStrategy` feeds the same cheap labels to a selector that weights by force
norms (GGFPS, ``oed.selectors.ggfps``): label-free with respect to DFT, its cheap labels counted
the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loops.cheap import CHEAP_DB, DEFAULT_CHEAP_ORACLE, CheapCost, CheapLabels
from oed.design import DEFAULT_REG, FeatureSpec
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES, atomic_write_text

__all__ = ["LFAB_VARIANTS", "CheapStrategy", "ForceNormStrategy", "LFaBStrategy", "error_weighted_kmeans", "pick_batch", "proxy_errors"]

#: Strategy names and the options they set: batch ("kmeans" | "top") and error ("forces" | "energy").
LFAB_VARIANTS = {
    "lfab": {"batch": "kmeans", "error": "forces"},
    "lfab-top": {"batch": "top", "error": "forces"},
    "lfab-energy": {"batch": "kmeans", "error": "energy"},
}
BATCHES = ("kmeans", "top")
ERRORS = ("forces", "energy")


def proxy_errors(model_energies: np.ndarray, model_forces: Sequence[np.ndarray], cheap_energies: np.ndarray,
                 cheap_forces: Sequence[np.ndarray | None], delta_energies: np.ndarray | None,
                 delta_forces: Sequence[np.ndarray] | None, *, error: str = "forces") -> np.ndarray:
    """Disagreement of the direct model with the Δ-corrected cheap surface, per configuration.

    Parameters
    ----------
    model_energies : ndarray, shape (n,)
        Direct model M: total energies, eV.
    model_forces : sequence of (n_atoms_i, 3) ndarray
        Direct model M: forces, eV/Å.
    cheap_energies : ndarray, shape (n,)
        Cheap surface c: total energies, eV (NaN: no cheap label).
    cheap_forces : sequence of (n_atoms_i, 3) ndarray or None
        Cheap surface c: forces, eV/Å (None: no cheap label).
    delta_energies, delta_forces : as the model's, or None
        Δ-model predictions (eV, eV/Å); None: no Δ-model (Δ = 0).
    error : {"forces", "energy"}
        ``"forces"``: sqrt(mean over the 3N components of (F_M − F_c − F_Δ)²), eV/Å;
        ``"energy"``: |E_M − E_c − E_Δ| / n_atoms, eV/atom.

    Returns
    -------
    ndarray, shape (n,)
        Proxy errors; NaN where the cheap label is missing.
    """
    n = len(model_energies)
    out = np.full(n, np.nan)
    for j in range(n):
        if cheap_forces[j] is None or not np.isfinite(cheap_energies[j]):
            continue
        f_delta = 0.0 if delta_forces is None else delta_forces[j]
        e_delta = 0.0 if delta_energies is None else float(delta_energies[j])
        if error == "forces":
            diff = np.asarray(model_forces[j]) - np.asarray(cheap_forces[j]) - f_delta
            out[j] = float(np.sqrt(np.mean(diff ** 2)))
        else:
            n_atoms = len(np.asarray(model_forces[j]))
            out[j] = abs(float(model_energies[j]) - float(cheap_energies[j]) - e_delta) / n_atoms
    return out


def error_weighted_kmeans(X: np.ndarray, errors: np.ndarray, k: int, *, random_state: int = 0) -> np.ndarray:
    """The largest-error member of each of ``k`` error-weighted k-means clusters.

    Parameters
    ----------
    X : ndarray, shape (n, d)
        Features of the scored candidates (one row each).
    errors : ndarray, shape (n,)
        Their proxy errors (finite, >= 0); the k-means sample weights are ``errors²``, so the
        centres spread as density × error² (all errors 0: plain k-means).
    k : int
        Clusters (at most ``n``).
    random_state : int

    Returns
    -------
    ndarray of int
        Positions into ``X``, at most ``k`` (an empty cluster gives no pick), ordered by
        decreasing error.
    """
    from sklearn.cluster import KMeans

    X = np.asarray(X, dtype=float)
    errors = np.asarray(errors, dtype=float)
    k = min(int(k), len(X))
    if k <= 0:
        return np.array([], dtype=int)
    weights = errors ** 2
    if not np.any(weights > 0):
        weights = np.ones_like(weights)
    labels = KMeans(n_clusters=k, n_init=4, random_state=random_state).fit(X, sample_weight=weights).labels_
    picks = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members):
            picks.append(int(members[np.argmax(errors[members])]))
    picks = np.array(picks, dtype=int)
    return picks[np.argsort(-errors[picks], kind="stable")]


def pick_batch(k: int, X: np.ndarray, errors: np.ndarray, *, batch: str = "kmeans", seed: int = 0) -> np.ndarray:
    """``k`` positions into the candidates: a batch by proxy error, then the fill-up.

    Parameters
    ----------
    k : int
    X : ndarray, shape (n, d)
        Candidate features (used by ``batch="kmeans"``).
    errors : ndarray, shape (n,)
        Proxy errors; NaN marks a candidate without a score.
    batch : {"kmeans", "top"}
        :func:`error_weighted_kmeans` on the scored candidates, or their ``k`` largest errors.
    seed : int
        k-means and the fill-up's random order.

    Returns
    -------
    ndarray of int, shape (min(k, n),)
        Distinct positions in pick order. When the batch gives fewer than ``k`` (empty clusters,
        few scored candidates) the rest are the largest remaining errors, then unscored
        candidates in a random order.
    """
    errors = np.asarray(errors, dtype=float)
    n = len(errors)
    k = min(int(k), n)
    scored = np.flatnonzero(np.isfinite(errors))
    by_error = scored[np.argsort(-errors[scored], kind="stable")]
    if batch == "top":
        picks = list(by_error[:k])
    else:
        picks = [int(scored[j]) for j in error_weighted_kmeans(np.asarray(X)[scored], errors[scored], k,
                                                               random_state=seed)]
    chosen = set(picks)
    unscored = np.random.default_rng([seed, 2508]).permutation(np.flatnonzero(~np.isfinite(errors)))
    for j in list(by_error) + list(unscored):
        if len(picks) >= k:
            break
        if int(j) not in chosen:
            picks.append(int(j))
            chosen.add(int(j))
    return np.array(picks, dtype=int)


@dataclass(frozen=True)
class CheapStrategy:
    """Base of the strategies that read a cheap oracle: its label store and a per-round record.

    Parameters
    ----------
    label : str
        The strategy as written (``lfab``, ``lfab@gap-kernel``): names the record file.
    cheap : str
        Cheap oracle (:func:`loops.oracles.make_oracle`), default GFN2-xTB.
    run_dir : Path or None
        The run directory: cheap labels in ``run_dir/cheap_labels.db``, the record in
        ``run_dir/selections/<label>/seed<seed>.cheap.json``. Required by ``select``.
    seed : int
        The campaign's seed (its round r selects with ``seed + r``): names the record file.
    """

    label: str = ""
    cheap: str = DEFAULT_CHEAP_ORACLE
    run_dir: Path | None = None
    seed: int = 0

    @property
    def record_path(self) -> Path:
        """``run_dir/selections/<label>/seed<seed>.cheap.json``."""
        return self._run_dir() / "selections" / self.label / f"seed{self.seed}.cheap.json"

    def _run_dir(self) -> Path:
        if self.run_dir is None:
            raise InputError(f"strategy {self.label!r} keeps its cheap labels in a run directory: give run_dir")
        return Path(self.run_dir)

    def _records(self) -> dict:
        from loops.rundir import read_json

        return read_json(self.record_path, {}).get("rounds", {})

    def cheap_labels(self, pool) -> CheapLabels:
        """The run's cheap-label store over ``pool`` (``run_dir/cheap_labels.db``)."""
        return CheapLabels(pool, self._run_dir() / CHEAP_DB, oracle=self.cheap)

    def cheap_cost(self, round: int) -> CheapCost:
        """Cheap labels the selections of rounds ≤ ``round`` used, and their seconds (cumulative).

        A label is charged once per campaign however many rounds read it, and whichever
        campaign of the run computed it: the cost of running this strategy alone.
        """
        done = [r for r in self._records().values() if int(r["round"]) <= int(round)]
        if not done:
            return CheapCost(0, 0, 0.0)
        last = max(done, key=lambda r: int(r["round"]))
        return CheapCost(int(last["cheap_labels"]), int(last["cheap_failed"]), float(last["cheap_seconds"]))

    def _write_round(self, round: int, entry: dict, used, cheap: CheapLabels, computed: int) -> None:
        """Record round ``round`` (replacing a record of it), with the cumulative cheap cost."""
        records = self._records()
        used = {int(i) for i in used}
        for r in records.values():
            if int(r["round"]) < round:
                used |= set(r["cheap_used"])
        cost = cheap.cost(used)
        records[str(round)] = {"round": round, **entry, "cheap_oracle": cheap.name, "cheap_computed": int(computed),
                               "cheap_labels": cost.n_labels, "cheap_failed": cost.n_failed,
                               "cheap_seconds": cost.seconds, "cheap_used": sorted(used)}
        atomic_write_text(self.record_path, json.dumps({"strategy": self.label, "seed": self.seed,
                                                        "rounds": records}, indent=1))


@dataclass(frozen=True)
class LFaBStrategy(CheapStrategy):
    """Bias-aware selection with a cheap oracle (Vinod & Zaspel, arXiv:2508.15577); see the module notes.

    Sequential: it needs the GAP trained on the labels so far (``model = "gap"``, as
    ``gap-variance``); a comparison picks round 0 at random. The Δ-model's fit goes to
    ``run_dir/models/selection/delta/`` and is removed after use. Parameters as
    :class:`CheapStrategy`, and:

    Parameters
    ----------
    spec : FeatureSpec
        Space of the batch clustering (energy rows; default summed SOAP).
    batch : {"kmeans", "top"}
    error : {"forces", "energy"}
        Proxy error: force RMS difference (eV/Å) or energy difference per atom (eV/atom).
    """

    label: str = "lfab"
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    batch: str = "kmeans"
    error: str = "forces"
    model: str | None = "gap"

    # -- scoring ----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.batch not in BATCHES:
            raise InputError(f"LFaB batch must be one of {', '.join(BATCHES)}, got {self.batch!r}")
        if self.error not in ERRORS:
            raise InputError(f"LFaB error must be one of {', '.join(ERRORS)}, got {self.error!r}")
        if self.spec.forces:
            raise InputError("LFaB clusters configurations, one energy row each: give a space without +forces")

    def fit_delta(self, labelled: Sequence[int], ctx, cheap: CheapLabels, workdir: Path):
        """The Δ-model: a GAP (the run model's settings) on DFT − cheap of the labelled configurations.

        E0s: fitted by least squares to the *differences* (:func:`loops.oracles.average_e0s`),
        not the difference of the two levels' free-atom energies: xTB's free atoms are not
        DFT's, so that difference leaves an offset of eV per molecule that the GP, with prior
        scale ``delta`` (1 eV), would have to learn; the least-squares E0s take each
        composition's mean difference out, and the GP learns only how it varies.

        Returns ``(model, n)``: the fitted GAP and its number of training configurations, or
        ``(None, 0)`` when no labelled configuration has a cheap label (then Δ = 0).
        """
        from loops.gap import GAPModel, GAPSettings
        from loops.oracles import average_e0s, bare

        energies, forces = cheap.energies_forces(labelled)
        diffs = []
        for i, e, f in zip(labelled, energies, forces):
            if f is None:
                continue
            dft = ctx.labels[i]
            atoms = bare(dft, i)
            atoms.info[REF_ENERGY] = float(dft.info[REF_ENERGY]) - float(e)
            atoms.arrays[REF_FORCES] = np.asarray(dft.arrays[REF_FORCES], dtype=float) - f
            diffs.append(atoms)
        if not diffs:
            return None, 0
        settings = getattr(ctx.model, "settings", None)
        if not isinstance(settings, GAPSettings):
            settings = None  # not a GAP's settings (or its defaults): the Δ-GAP takes GAPSettings()
        delta = GAPModel(settings).fit(diffs, e0s=average_e0s(diffs), workdir=workdir)
        return delta, len(diffs)

    def score(self, cand: Sequence[int], labelled: Sequence[int], ctx, *, round: int = 0) -> tuple[np.ndarray, dict]:
        """Proxy errors of ``cand`` (shape (n_cand,), NaN: no cheap label) and what went into them.

        Cheap-labels ``cand`` and ``labelled`` where missing, fits the Δ-model, predicts with
        ``ctx.model`` and the Δ-model. The dict holds ``n_delta`` (Δ training size), ``cheap``
        (the :class:`~loops.cheap.CheapLabels`) and ``cheap_computed`` (labels computed now).

        Raises
        ------
        InputError
            No run directory, bad options, or no fitted model in ``ctx``.
        """
        from loops.fitting import remove_fit_dir

        self._check()
        if ctx.model is None:
            raise InputError(f"{self.label} needs the model fitted on the labels so far (ctx.model)")
        cand = [int(i) for i in cand]
        labelled = [int(i) for i in labelled]
        cheap = self.cheap_labels(ctx.pool)
        computed = cheap.ensure(list(dict.fromkeys(cand + labelled)))
        workdir = self._run_dir() / "models" / "selection" / "delta" / self.label / f"seed{self.seed}" / f"r{round}"
        delta, n_delta = self.fit_delta(labelled, ctx, cheap, workdir)
        e_c, f_c = cheap.energies_forces(cand)
        frames = [ctx.pool[i] for i in cand]
        e_m, f_m = ctx.model.predict(frames)
        e_d, f_d = delta.predict(frames) if delta is not None else (None, None)
        if delta is not None:
            remove_fit_dir(workdir)  # the Δ-model is refitted each round; its files are not kept
        errors = proxy_errors(e_m, f_m, e_c, f_c, e_d, f_d, error=self.error)
        return errors, {"n_delta": n_delta, "cheap": cheap, "cheap_computed": computed}

    def select(self, k: int, cand: np.ndarray, labelled: Sequence[int], ctx) -> list[int]:
        """``k`` pool indices from ``cand`` (see the module notes); the round's record is written."""
        round = int(ctx.seed) - int(self.seed)
        cand = np.asarray(cand, dtype=int)
        errors, info = self.score(cand, labelled, ctx, round=round)
        X = ctx.features.get(self.spec)[0].energy_rows()[cand] if self.batch == "kmeans" else None
        order = pick_batch(k, X, errors, batch=self.batch, seed=int(ctx.seed))
        picks = [int(cand[j]) for j in order]
        self._record(round, picks, errors[order], errors, labelled, cand, info)
        return picks

    def _record(self, round: int, picks, pick_errors, errors, labelled, cand, info) -> None:
        finite = errors[np.isfinite(errors)]
        entry = {
            "n_labelled": len(labelled), "n_candidates": len(cand), "picks": picks,
            "proxy_errors": [None if not np.isfinite(e) else float(e) for e in pick_errors],
            "error": self.error, "unit": "eV/Å" if self.error == "forces" else "eV/atom", "batch": self.batch,
            "space": self.spec.kind, "n_unscored": int(len(errors) - len(finite)),
            "candidates_error": ({"mean": float(finite.mean()), "median": float(np.median(finite)),
                                  "max": float(finite.max())} if len(finite) else None),
            "n_delta": info["n_delta"],
        }
        self._write_round(round, entry, list(cand) + list(labelled), info["cheap"], info["cheap_computed"])


@dataclass(frozen=True)
class ForceNormStrategy(CheapStrategy):
    """A selector that weights by force norms (``uses_force_norms``: GGFPS), fed by the cheap oracle.

    GGFPS (Trestman et al., arXiv:2510.08906) needs ‖F‖ of every candidate before any DFT label:
    here the Euclidean norm of the cheap oracle's 3N force vector (eV/Å), charged to the strategy
    like LFaB's cheap labels. Label-free with respect to DFT (one-shot or sequential). A candidate
    whose cheap label failed has no norm: it is left out of the selector's pool and picked only by
    the fill-up (seeded random order) when fewer than k others remain. Parameters as
    :class:`CheapStrategy`, and ``name`` (the selector), ``spec`` (its feature space), ``reg``.
    """

    name: str = "ggfps"
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    reg: float = DEFAULT_REG
    model: str | None = None

    def select(self, k: int, cand: np.ndarray, labelled: Sequence[int], ctx) -> list[int]:
        """``k`` pool indices from ``cand`` by the selector with cheap force norms; the round is recorded."""
        from oed.design import fit_selector

        round = int(ctx.seed) - int(self.seed)
        cand = np.asarray(cand, dtype=int)
        cheap = self.cheap_labels(ctx.pool)
        computed = cheap.ensure(cand)
        _, forces = cheap.energies_forces(cand)
        ok = np.array([f is not None for f in forces], dtype=bool)
        norms = np.array([float(np.linalg.norm(f)) for f in forces if f is not None])
        X, _ = ctx.features.get(self.spec)
        scored = cand[ok]
        picks: list[int] = []
        if len(scored) and k > 0:
            selector = fit_selector(self.name, min(k, len(scored)), X.subset(scored),
                                    X_train=X.subset(list(labelled)) if len(labelled) else None,
                                    force_norms=norms, seed=int(ctx.seed), reg=self.reg)
            picks = [int(scored[j]) for j in selector.selected_idx_]
        fill = np.random.default_rng([int(ctx.seed), 2510]).permutation(cand[~ok])
        picks += [int(i) for i in fill[:max(0, k - len(picks))]]
        by_index = dict(zip(scored.tolist(), norms.tolist()))
        entry = {"n_labelled": len(labelled), "n_candidates": len(cand), "picks": picks,
                 "force_norms": [by_index.get(i) for i in picks], "unit": "eV/Å", "selector": self.name,
                 "space": self.spec.kind, "n_unscored": int((~ok).sum())}
        self._write_round(round, entry, cand, cheap, computed)
        return picks


def make_lfab(spec, feature_spec: FeatureSpec | None, *, run_dir: Path | None, seed: int) -> LFaBStrategy:
    """The :class:`LFaBStrategy` of a parsed ``lfab[@space]`` (:data:`LFAB_VARIANTS`), clustering in
    ``feature_spec`` (None: summed SOAP, allowed only for the soap space).

    Raises
    ------
    InputError
        A space other than soap without its feature spec.
    """
    if feature_spec is None:
        if spec.space != "soap":
            raise InputError(f"strategy {spec.label!r} needs the feature spec of its {spec.space} space")
        feature_spec = FeatureSpec()
    return LFaBStrategy(label=spec.label, spec=feature_spec, run_dir=None if run_dir is None else Path(run_dir),
                        seed=int(seed), **LFAB_VARIANTS[spec.name])
