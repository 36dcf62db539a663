"""Domain of applicability: the MaxVol extrapolation grade γ.

For a model that is linear in the features of an atom (or a configuration),
E(x) = wᵀx, Podryabinkin & Shapeev select an *active set*: r training rows A
(r × r after projection to r feature directions) whose |det A| is maximal
(MaxVol). Any new row x is then written in the basis of the active rows,
x = c A with c = x A⁻¹, and its extrapolation grade is

    γ(x) = max_j |c_j| = max_j |(x A⁻¹)_j|.

γ is the largest factor by which |det A| would grow if x replaced an active
row, so γ ≤ 1 means x interpolates the active set (it could not enlarge the
D-optimal design) and γ > 1 means it extrapolates; since E(x) = Σ_j c_j E(a_j),
it also bounds how far the prediction leans on an extrapolated combination of
training environments. The grade of a configuration is the largest grade of
its atoms. pacemaker computes one active set per element over its B-basis
projections (Lysogorskiy et al.) and that is what :class:`ExtrapolationGrade`
does over SOAP vectors. The label-free linear algebra (:func:`maxvol`,
:class:`ActiveSet`, :func:`fit_active_set`) lives in :mod:`oed.active_set` and
is re-exported here.

Thresholds used by pacemaker in practice: γ ≲ 1 interpolation; 1 < γ ≲ 2 mild
extrapolation; warn / collect the structure for labelling above γ = 2–5
(:data:`GAMMA_WARN` takes the cautious end); stop a simulation above
γ = 10–25 (:data:`GAMMA_STOP`).

References
----------
Podryabinkin & Shapeev, Comput. Mater. Sci. 140, 171 (2017); Lysogorskiy et al., Phys. Rev.
Mater. 7, 043801 (2023) — full references in :mod:`oed.active_set`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from oed._torch import CHUNK

# maxvol, ActiveSet, fit_active_set and MAX_COMPONENTS are re-exported: callers import them from oed.domain.
from oed.active_set import MAX_COMPONENTS, ActiveSet, _is_int, _is_number, fit_active_set, maxvol
from oed.errors import InputError, NotFittedError
from oed.information import check_features

#: pacemaker's usual "collect / warn" level (its practice spans 2–5).
GAMMA_WARN = 2.0
#: pacemaker's usual "stop the simulation" level (its practice spans 10–25).
GAMMA_STOP = 10.0
#: γ of a training configuration is 1 up to round-off (1.0000000000000004 was seen): grades
#: within this of a threshold are not flagged.
GAMMA_TOLERANCE = 1e-6
#: Group key of the single active set used when ``per_atom=False``.
STRUCTURE = "structure"


# ------------------------------------------------------------- the estimator
@dataclass(frozen=True)
class GradeResult:
    """Extrapolation grades of a list of configurations.

    Attributes
    ----------
    gamma : ndarray, shape (n_configs,)
        γ of each configuration (max over its atoms when graded per atom);
        ``inf`` where an atom's element is absent from the training set.
    residual : ndarray, shape (n_configs,)
        Largest ‖x − x_proj‖/‖x‖ over the configuration's rows: how much of the
        feature vector lies outside the span the active set covers (0–1; 1 for
        an element absent from training).
    gamma_per_atom, residual_per_atom : list of ndarray (n_atoms_i,), or None
        The same per atom (``None`` when graded per structure).
    """

    gamma: np.ndarray
    residual: np.ndarray
    gamma_per_atom: list[np.ndarray] | None
    residual_per_atom: list[np.ndarray] | None


class ExtrapolationGrade:
    """MaxVol extrapolation grade γ of configurations against a training set.

    ``fit`` computes training features (per atom, or the summed per-structure
    feature), projects each group of rows onto its r leading principal
    directions and selects an active set by :func:`maxvol`; with
    ``per_atom=True`` there is one active set per element (as in pacemaker),
    and an atom is graded only against training atoms of its own element.

    Design choices, stated plainly:

    - **No centring.** γ is the grade of a model that is linear in the
      features with no intercept (a per-atom energy wᵀq): x = c A, and γ is
      1-homogeneous (γ(2x) = 2γ(x)). Centring would grade an affine model that
      the potential is not, and could drop the mean direction — for unit SOAP
      vectors the largest part of every row. The principal directions are
      therefore those of the uncentred rows (leading right singular vectors).
    - **Projection.** SOAP vectors have d ≈ 2000 entries and there are often
      fewer training rows, so rows are reduced to r = ``n_components``
      directions first (MaxVol needs n ≥ r rows of rank r). The component of
      x outside that span is *ignored* by γ: a new environment that moves
      only along directions never seen in training can have γ ≤ 1. The
      residual ratio ‖x − x_proj‖/‖x‖ (:meth:`grade`, ``residual_``) reports
      that part separately; read both.
    - **Few rows per element.** When an element has no more training atoms
      than r, every one of them is active, MaxVol has no choice to make and
      γ of a new atom is its least-norm expansion in all training atoms;
      in-distribution atoms then often get γ slightly above 1. A smaller
      ``n_components`` lowers the grades of in-distribution data but also the
      contrast to out-of-distribution data. Measured on ethanol with the
      defaults and 100 training configurations (600 H, 200 C, 100 O rows):
      median γ of test_MD 1.12 (63 % of configurations above 1, 7 % above 2),
      normal modes 874 / 3005 cm⁻¹ 4.9 / 7.9, H removal 38; with 1000
      training configurations the test_MD median falls to 0.70.

    Parameters
    ----------
    descriptor : object, optional
        Feature maker with ``fit(frames)``, ``per_atom(frames)`` and
        ``per_structure(frames)`` (as :class:`~oed.descriptors.SOAPDescriptor`).
        Default ``SOAPDescriptor()``. A copy is kept; an unfitted one (no
        ``n_features_``) is fitted on the training frames.
    per_atom : bool, default True
        Grade atoms with one active set per element; otherwise grade summed
        per-structure features with one active set.
    n_components : int, optional
        Principal directions per active set; default ``min(n_rows, d, 256)``
        per group. Capped at each group's rows and numerical rank.
    tol : float, default 1.01
        MaxVol swap threshold (≥ 1): every training row has γ ≤ tol, active rows γ = 1.

    Attributes
    ----------
    descriptor_ : object
        The fitted descriptor.
    species_ : list of str
        Elements present in the training set, by atomic number.
    groups_ : list of str
        Keys of the active sets: ``species_`` when ``per_atom``, else ``["structure"]``.
    components_ : dict[str, ndarray (r_g, d)]
        Orthonormal principal directions of each group's training rows.
    singular_values_ : dict[str, ndarray (r_g,)]
    n_components_ : dict[str, int]
        r_g actually used.
    active_set_ : dict[str, ndarray of int (r_g,)]
        Active rows, as indices into the group's training rows (training
        configurations in order, atoms of that element in order within each).
    active_origin_ : dict[str, ndarray of int (r_g, 2)]
        (configuration, atom) of every active row; atom is -1 per structure.
    active_matrix_inv_ : dict[str, ndarray (r_g, r_g)]
        A⁻¹ with A = (active rows) @ components_ᵀ; γ(x) = max |x components_ᵀ A⁻¹|.
    gamma_train_ : ndarray, shape (n_train,)
        γ of every training configuration (≤ tol).
    residual_ : ndarray, shape (n_train,)
        Residual ratio of every training configuration: the level that new
        data's residuals can be compared with (0 when r_g equals the rows' rank).
    n_features_in_ : int
        d.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from oed.descriptors import SOAPDescriptor
    >>> train = [molecule("H2O")]
    >>> grade = ExtrapolationGrade(descriptor=SOAPDescriptor(n_max=2, l_max=2)).fit(train)
    >>> bool(grade.transform(train)[0] <= grade.tol)
    True
    """

    def __init__(
        self,
        *,
        descriptor=None,
        per_atom: bool = True,
        n_components: int | None = None,
        tol: float = 1.01,
    ) -> None:
        self.descriptor = descriptor
        self.per_atom = per_atom
        self.n_components = n_components
        self.tol = tol

    def get_params(self) -> dict:
        """Constructor parameters, as scikit-learn's ``get_params(deep=False)``."""
        return {"descriptor": self.descriptor, "per_atom": self.per_atom, "n_components": self.n_components, "tol": self.tol}

    # ------------------------------------------------------------ checks
    def _validate_params(self) -> None:
        n, tol = self.n_components, self.tol
        checks = (
            ("per_atom", "a bool", isinstance(self.per_atom, (bool, np.bool_))),
            ("n_components", "a positive integer or None", n is None or (_is_int(n) and n >= 1)),
            ("tol", "a finite number >= 1", _is_number(tol) and np.isfinite(tol) and tol >= 1),
        )
        for name, what, good in checks:
            if not good:
                raise InputError(f"ExtrapolationGrade {name} must be {what}, got {getattr(self, name)!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "active_matrix_inv_"):
            raise NotFittedError("ExtrapolationGrade is not fitted: call fit(train_frames) first")

    @staticmethod
    def _check_frames(frames, what: str) -> list[Atoms]:
        if isinstance(frames, Atoms):
            frames = [frames]
        frames = list(frames)
        for i, atoms in enumerate(frames):
            if not isinstance(atoms, Atoms):
                raise InputError(f"{what}: item {i} is a {type(atoms).__name__}, expected ase.Atoms")
            if len(atoms) == 0:
                raise InputError(f"{what}: configuration {i} has no atoms")
        return frames

    # --------------------------------------------------------------- fit
    def fit(self, train_frames: Sequence[Atoms]) -> ExtrapolationGrade:
        """Build the active set(s) from the training configurations.

        Raises
        ------
        InputError
            No training configurations, bad parameters, or training features
            that are all zero for a group.
        """
        self._validate_params()
        frames = self._check_frames(train_frames, "training set")
        if not frames:
            raise InputError("the training set is empty: no configurations to build an active set from")
        if self.descriptor is None:
            from oed.descriptors import SOAPDescriptor

            descriptor = SOAPDescriptor()
        else:
            descriptor = copy.deepcopy(self.descriptor)
        if getattr(descriptor, "n_features_", None) is None:
            descriptor.fit(frames)
        species = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()}, key=atomic_numbers.get)

        if self.per_atom:
            feats = descriptor.per_atom(frames)
            rows = np.concatenate(feats)
            symbols = np.concatenate([atoms.get_chemical_symbols() for atoms in frames])
            config = np.repeat(np.arange(len(frames)), [len(a) for a in frames])
            atom = np.concatenate([np.arange(len(a)) for a in frames])
            groups = {s: np.flatnonzero(symbols == s) for s in species}
        else:
            rows = np.asarray(descriptor.per_structure(frames), dtype=float)
            config = np.arange(len(frames))
            atom = np.full(len(frames), -1)
            groups = {STRUCTURE: np.arange(len(frames))}
        rows = check_features(rows, "training features")

        components, singular, n_comp, active, origin, inverse = {}, {}, {}, {}, {}, {}
        gamma_rows = np.empty(len(rows))
        resid_rows = np.empty(len(rows))
        for g, members in groups.items():
            aset = fit_active_set(rows[members], n_components=self.n_components, tol=self.tol, name=f"training features of {g}")
            components[g] = aset.components
            singular[g] = aset.singular_values
            n_comp[g] = len(aset.rows)
            active[g] = aset.rows
            origin[g] = np.stack([config[members[aset.rows]], atom[members[aset.rows]]], axis=1)
            inverse[g] = aset.inverse
            gamma_rows[members] = aset.gamma(rows[members])
            resid_rows[members] = aset.residual(rows[members])

        self.descriptor_ = descriptor
        self.species_ = species
        self.groups_ = list(groups)
        self.components_ = components
        self.singular_values_ = singular
        self.n_components_ = n_comp
        self.active_set_ = active
        self.active_origin_ = origin
        self.active_matrix_inv_ = inverse
        self.n_features_in_ = int(rows.shape[1])
        self.gamma_train_ = _config_max(gamma_rows, config, len(frames))
        self.residual_ = _config_max(resid_rows, config, len(frames))
        return self

    # ----------------------------------------------------------- grading
    def _active(self, group: str) -> ActiveSet:
        return ActiveSet(
            components=self.components_[group],
            singular_values=self.singular_values_[group],
            rows=self.active_set_[group],
            inverse=self.active_matrix_inv_[group],
        )

    def gamma_of_features(self, X, group: str | None = None) -> np.ndarray:
        """γ of raw feature rows against one active set.

        Parameters
        ----------
        X : array, shape (n, n_features_in_)
            Feature rows (e.g. from ``descriptor_.per_atom``).
        group : str, optional
            Element symbol when ``per_atom``; ignored (may be omitted) per structure.

        Returns
        -------
        ndarray, shape (n,)

        Raises
        ------
        InputError
            Wrong feature count, non-finite rows, or an element with no active set.
        """
        self._check_fitted()
        X = check_features(X, "X", n_features=self.n_features_in_)
        return self._active(self._group(group)).gamma(X)

    def residual_of_features(self, X, group: str | None = None) -> np.ndarray:
        """Residual ratio ‖x − x_proj‖/‖x‖ of raw feature rows, shape (n,) (see :meth:`gamma_of_features`)."""
        self._check_fitted()
        X = check_features(X, "X", n_features=self.n_features_in_)
        return self._active(self._group(group)).residual(X)

    def _group(self, group: str | None) -> str:
        if not self.per_atom:
            return STRUCTURE
        if group not in self.active_matrix_inv_:
            raise InputError(f"no active set for {group!r}: the training set holds {', '.join(self.species_)}")
        return group

    def grade(self, frames: Sequence[Atoms]) -> GradeResult:
        """γ and the residual ratio of every configuration (and atom, when ``per_atom``).

        Elements absent from the training set get γ = inf (and residual 1),
        with a warning. When the descriptor does not cover such an element at
        all, the other atoms of that configuration are graded with those atoms
        left out of their environments (their γ then understates the novelty;
        give the descriptor ``species=`` covering every element to grade them
        fully). Configurations are processed in chunks of about
        :data:`oed._torch.CHUNK` atoms, so a large pool never needs all its
        features in memory at once.

        Returns
        -------
        GradeResult

        Raises
        ------
        NotFittedError, InputError
        """
        self._check_fitted()
        frames = self._check_frames(frames, "configurations to grade")
        unseen: dict[str, int] = {}
        uncovered: set[str] = set()
        gam, res, gam_atoms, res_atoms = [], [], [], []
        for chunk in _chunks(frames, CHUNK):
            g, r, ga, ra = self._grade_chunk(chunk, unseen, uncovered)
            gam.append(g)
            res.append(r)
            gam_atoms.extend(ga)
            res_atoms.extend(ra)
        if unseen:
            unit = "atom(s)" if self.per_atom else "configuration(s)"
            what = ", ".join(f"{s} in {n} {unit}" for s, n in unseen.items())
            msg = f"element(s) absent from the training set get gamma = inf: {what}"
            if uncovered:
                msg += (
                    f"; the descriptor does not cover {', '.join(sorted(uncovered, key=atomic_numbers.get))}, so the other atoms "
                    "of those configurations were graded with them left out of their environments"
                )
            warnings.warn(msg, stacklevel=2)
        return GradeResult(
            gamma=np.concatenate(gam) if gam else np.zeros(0),
            residual=np.concatenate(res) if res else np.zeros(0),
            gamma_per_atom=gam_atoms if self.per_atom else None,
            residual_per_atom=res_atoms if self.per_atom else None,
        )

    def _grade_chunk(self, frames, unseen, uncovered):
        covered = getattr(self.descriptor_, "species_", None)
        covered = set(covered) if covered is not None else None
        known = set(self.species_)
        n = len(frames)
        symbols = [np.array(atoms.get_chemical_symbols()) for atoms in frames]
        if not self.per_atom:
            gamma = np.full(n, np.inf)
            resid = np.ones(n)
            ok = []
            for i, sym in enumerate(symbols):
                bad = sorted(set(sym) - known)
                for s in bad:
                    unseen[s] = unseen.get(s, 0) + 1
                if not bad:
                    ok.append(i)
            if ok:
                X = check_features(self.descriptor_.per_structure([frames[i] for i in ok]), "features", n_features=self.n_features_in_)
                aset = self._active(STRUCTURE)
                gamma[ok] = aset.gamma(X)
                resid[ok] = aset.residual(X)
            return gamma, resid, [], []

        # per atom: atoms of elements the descriptor cannot see are cut out before featurising
        keep = [np.ones(len(s), bool) if covered is None else np.isin(s, list(covered)) for s in symbols]
        reduced = [atoms if k.all() else atoms[k] for atoms, k in zip(frames, keep)]
        todo = [i for i, k in enumerate(keep) if k.any()]
        feats: list[np.ndarray | None] = [None] * n
        if todo:
            for i, f in zip(todo, self.descriptor_.per_atom([reduced[i] for i in todo])):
                feats[i] = f
        gamma_atoms = [np.full(len(s), np.inf) for s in symbols]
        resid_atoms = [np.ones(len(s)) for s in symbols]
        for s in sorted({x for sym in symbols for x in sym} - known, key=atomic_numbers.get):
            unseen[s] = unseen.get(s, 0) + int(sum(np.sum(sym == s) for sym in symbols))
            if covered is not None and s not in covered:
                uncovered.add(s)
        if todo:
            rows = check_features(np.concatenate([feats[i] for i in todo]), "features", n_features=self.n_features_in_)
            where = np.concatenate([np.flatnonzero(keep[i]) for i in todo])
            owner = np.concatenate([np.full(int(keep[i].sum()), i) for i in todo])
            elem = np.concatenate([symbols[i][keep[i]] for i in todo])
            g_rows = np.full(len(rows), np.inf)
            r_rows = np.ones(len(rows))
            for s in self.groups_:
                m = elem == s
                if m.any():
                    aset = self._active(s)
                    g_rows[m] = aset.gamma(rows[m])
                    r_rows[m] = aset.residual(rows[m])
            for i in todo:
                m = owner == i
                gamma_atoms[i][where[m]] = g_rows[m]
                resid_atoms[i][where[m]] = r_rows[m]
        gamma = np.array([g.max() for g in gamma_atoms])
        resid = np.array([r.max() for r in resid_atoms])
        return gamma, resid, gamma_atoms, resid_atoms

    def transform(self, frames: Sequence[Atoms]) -> np.ndarray:
        """γ of every configuration, shape (n_configs,) (max over atoms when ``per_atom``)."""
        return self.grade(frames).gamma

    def gamma_per_atom(self, frames: Sequence[Atoms]) -> list[np.ndarray]:
        """γ of every atom: list of arrays (n_atoms_i,).

        Raises
        ------
        InputError
            When fitted with ``per_atom=False``.
        """
        self._check_fitted()
        if not self.per_atom:
            raise InputError("gamma_per_atom needs per_atom=True: this grade was fitted on per-structure features")
        return self.grade(frames).gamma_per_atom


def _config_max(values: np.ndarray, config: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, config, values)
    return out


def _chunks(frames: list[Atoms], max_atoms: int):
    start, count = 0, 0
    for i, atoms in enumerate(frames):
        if count and count + len(atoms) > max_atoms:
            yield frames[start:i]
            start, count = i, 0
        count += len(atoms)
    if start < len(frames):
        yield frames[start:]


# ------------------------------------------------------------------ helpers
def flag(gamma, threshold: float = 1.0, tol: float = GAMMA_TOLERANCE) -> np.ndarray:
    """``gamma > threshold + tol`` as a bool array (inf is flagged, NaN is not).

    The tolerance (:data:`GAMMA_TOLERANCE`) keeps the round-off of γ = 1 on a training
    configuration from flagging it.

    Use ``threshold=1`` for "extrapolates at all", :data:`GAMMA_WARN` (2; pacemaker
    uses 2–5) to collect structures for labelling and :data:`GAMMA_STOP` (10;
    pacemaker uses 10–25) to stop a simulation.

    Raises
    ------
    InputError
        For a threshold that is not a positive number.
    """
    if not _is_number(threshold) or not threshold > 0:
        raise InputError(f"threshold must be a positive number, got {threshold!r}")
    return np.asarray(gamma, dtype=float) > threshold + tol


def plot_gamma(
    gamma_by_set: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    title: str = "",
    thresholds: Sequence[float] = (GAMMA_WARN,),
) -> None:
    """Box plot with the individual points of γ for each candidate set, log y-axis.

    The γ = 1 line (interpolation limit) is drawn solid, each of
    ``thresholds`` dashed; infinite grades (unseen elements) are drawn at the
    top edge as triangles and counted in the set's label.

    Parameters
    ----------
    gamma_by_set : mapping name → array (n_configs,)
        One box per set, in the mapping's order.
    path : path-like
        Image to write (format from the suffix, PNG if none); written atomically.
    title : str, optional
    thresholds : sequence of float, default (GAMMA_WARN,)
        Extra reference lines.

    Raises
    ------
    InputError
        No sets, or a set with negative or NaN values.
    """
    if not gamma_by_set:
        raise InputError("plot_gamma needs at least one set of grades")
    data = {}
    for name, g in gamma_by_set.items():
        g = np.asarray(g, dtype=float).reshape(-1)
        if np.any(np.isnan(g)) or np.any(g < 0):
            raise InputError(f"grades of {name!r} hold NaN or negative values")
        data[str(name)] = g
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite_all = np.concatenate([g[np.isfinite(g) & (g > 0)] for g in data.values()])
    lo = min(float(finite_all.min()) if finite_all.size else 1.0, 1.0) / 1.5
    hi = max(float(finite_all.max()) if finite_all.size else 1.0, 1.0, *thresholds) * 1.5
    names = list(data)
    width = max(5.0, 1.3 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(width, 4.5), constrained_layout=True)
    rng = np.random.default_rng(0)  # jitter only
    labels = []
    for k, name in enumerate(names, start=1):
        g = data[name]
        fin = np.clip(g[np.isfinite(g)], lo, None)
        n_inf = int(np.sum(np.isinf(g)))
        if fin.size:
            ax.boxplot(fin, positions=[k], widths=0.5, showfliers=False, medianprops={"color": "C1"})
            ax.scatter(k + rng.uniform(-0.18, 0.18, fin.size), fin, s=8, alpha=0.45, color="C0", zorder=3)
        if n_inf:
            ax.scatter(k + rng.uniform(-0.18, 0.18, n_inf), np.full(n_inf, hi / 1.2), marker="^", s=18, color="C3", zorder=3)
        label = f"{name}\n(n={g.size}"
        label += f", {n_inf} inf)" if n_inf else ")"
        labels.append(label)
    ax.axhline(1.0, color="k", lw=1.2, label="γ = 1 (interpolation limit)")
    for t in thresholds:
        ax.axhline(float(t), color="C3", lw=1.0, ls="--", label=f"γ = {t:g}")
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels(labels, rotation=20 if len(names) > 4 else 0, fontsize=9)
    ax.set_xlim(0.4, len(names) + 0.6)
    ax.set_ylabel("extrapolation grade γ (max over atoms)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title)
    from oed.plots import save_figure

    save_figure(fig, path)


__all__ = [
    "GAMMA_STOP",
    "GAMMA_TOLERANCE",
    "GAMMA_WARN",
    "MAX_COMPONENTS",
    "STRUCTURE",
    "ActiveSet",
    "ExtrapolationGrade",
    "GradeResult",
    "fit_active_set",
    "flag",
    "maxvol",
    "plot_gamma",
]
