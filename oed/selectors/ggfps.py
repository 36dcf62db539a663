"""Gradient-guided farthest-point sampling: FPS whose distances are weighted by the configurations' force norms."""

from __future__ import annotations

import numbers

import numpy as np

from oed._torch import as_tensor, resolve_device
from oed.errors import InputError
from oed.selectors._base import SelectorBase, check_force_norms
from oed.selectors._greedy import greedy_select
from oed.selectors._lazy import MAX_LAZY_FPS_PICKS, lazy_fps, use_lazy
from oed.selectors.fps import _FPSHooks


def _check_exponent(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class _GGFPSHooks(_FPSHooks):
    """FPS hooks whose score is g^β_t · d: the distance state and its update are FPS's own."""

    def __init__(self, X, X_train, g, betas) -> None:
        super().__init__(X, X_train)
        self.g, self.betas = g, betas  # torch (n,), and β of each pick (python floats)
        self.constant = len(set(betas)) <= 1

    def start(self) -> None:
        super().start()
        self.t = 0  # picks made so far: index into the β schedule
        self.weights = self.g ** self.betas[0]  # torch: 0 ** 0 == 1, so β = 0 weights every row by 1

    def score(self):
        import torch

        if not self.constant:
            self.weights = self.g ** self.betas[self.t]
        # sign(d²)·√|d²| orders rows exactly as d² does, also where rounding makes d² of a
        # duplicate slightly negative: with β = 0 the picks are FPS's, ties included.
        d = torch.sign(self.d2) * torch.sqrt(torch.abs(self.d2))
        return self.weights * d

    def update(self, j: int) -> None:
        super().update(j)
        self.t += 1


class GGFPS(SelectorBase):
    """Gradient-guided farthest-point sampling (GGFPS; Trestman et al. 2025).

    Farthest-point sampling in which the distance of each pool configuration
    to the selected set is weighted by a power of its force norm. With
    g_j = ‖F_j‖ (Euclidean norm of configuration j's 3N force vector, eV/Å)
    and d_j = min_{s∈S} ‖x_j − x_s‖ (distance to the nearest training row or
    earlier pick, feature units), pick k takes the pool row with the largest

        s_j = g_j^β_k · d_j,

    ties to the lowest index; the distances are then lowered as in FPS. The
    first pick, when there is no training set, is drawn at random with
    probability p_j = g_j / Σ_i g_i. Trestman et al. find that plain FPS
    under-samples equilibrium geometries of MD17 trajectories and that the
    force weighting corrects this. The distance state and its update are
    those of :class:`~oed.selectors.fps.FarthestPointSampling` (same squared
    distance formula); each pick costs one chunked matrix–vector product.

    **Exponent schedule.** The paper uses a schedule of exponents β_k over the
    picks. Our reading of it, implemented here: with ``beta_end`` None, β_k =
    ``beta`` for every pick; otherwise β goes linearly from ``beta`` (first
    pick) to ``beta_end`` (last pick), β_k = beta + (beta_end − beta)·k/(K − 1)
    for picks k = 0..K−1. The schedule is over the picks of one ``fit``: a
    continued selection (``X_train`` = earlier picks) restarts it, so it equals
    the fresh selection only for a constant β. β = 0 is plain FPS with a first
    pick drawn ∝ g (exactly FPS's picks after that first one); β > 0 favours
    high-force configurations, β < 0 low-force ones.

    **Zero force norms** (an exact equilibrium geometry, or a constant-force
    stand-in) are allowed. With β_k > 0 their score is 0, so they are picked
    only when no remaining row scores higher — in practice when every
    remaining row has g = 0 or sits on a pick (d = 0) — and then by lowest
    index. With β_k = 0 the weight is 0⁰ = 1 (plain FPS). A schedule with a
    negative β_k and a zero norm is refused (the weight would be infinite).
    If every norm is 0 and there is no training set, the first pick is
    uniformly random.

    Parameters
    ----------
    n_to_select : int
        Number of pool rows to pick (truncated, with a warning, to the pool size).
    beta : float, default 1.0
        Exponent β of the force norm (of the first pick, when ``beta_end`` is given).
    beta_end : float or None, default None
        Exponent of the last pick; β is interpolated linearly in between.
        None keeps β constant.
    random_state : int, numpy.random.Generator or None, default None
        Seed of the first pick's draw (used only without a training set).
    device : str, default "auto"
        Torch device; "auto" uses a GPU when present. Arithmetic is float64.
    lazy : bool or "auto", default "auto"
        With a constant β (no ``beta_end``), lazy greedy as in :class:`~oed.selectors.fps.FarthestPointSampling`:
        the weights are fixed and distances only fall, so scores only fall; the same picks.
        "auto": on the CPU. A β schedule always takes plain passes.

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
        Pool indices in pick order, distinct.
    gains_ : ndarray of float, shape (n_selected_,)
        Score s = g^β·d of each pick when it was picked (force-weighted feature
        distance, units (eV/Å)^β × feature units; ≥ 0). The first entry is
        ``inf`` without a training set (the drawn start point has no set to be
        far from), as in FPS. Not monotone in general: the weights differ per row.
    n_selected_ : int
    hausdorff_ : ndarray of float, shape (n_candidates,)
        Final unweighted distance of every pool row to training rows ∪ picks (0 for picks).
    betas_ : ndarray of float, shape (n_selected_,)
        Exponent used for each pick.

    Raises
    ------
    InputError
        From :meth:`fit`: missing or bad ``force_norms`` (wrong shape, NaN/inf,
        negative), a negative exponent with a zero norm, a non-finite
        ``beta``/``beta_end``, bad shapes or values of ``X``, an empty pool, a
        bad ``n_to_select`` or an ``X_target``.

    References
    ----------
    M. Trestman, S. Gugler, F. A. Faber & O. A. von Lilienfeld, "Gradient-Guided
    Furthest Point Sampling for Robust Training Set Selection", arXiv:2510.08906 (2025);
    T. F. Gonzalez, Theor. Comput. Sci. 38, 293 (1985), doi:10.1016/0304-3975(85)90224-5.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.1, 0.1]])
    >>> g = np.array([1.0, 5.0, 0.01, 1.0])  # eV/Å
    >>> sel = GGFPS(3, beta=1.0, random_state=0, device="cpu").fit(X, X_train=X[:1], force_norms=g)
    >>> sel.selected_idx_.tolist()  # g·d: 1 scores 5.0; 3 (0.14) beats the farther 2 (0.03)
    [1, 3, 2]
    """

    uses_random_state = True
    uses_force_norms = True
    gains_unit = "weighted feature distance"

    def __init__(self, n_to_select: int, *, beta: float = 1.0, beta_end: float | None = None,
                 random_state=None, device: str = "auto", lazy="auto") -> None:
        self.n_to_select = n_to_select
        self.beta = beta
        self.beta_end = beta_end
        self.random_state = random_state
        self.device = device
        self.lazy = lazy

    def _schedule(self, k: int) -> np.ndarray:
        b0 = _check_exponent(self.beta, "beta")
        if self.beta_end is None:
            return np.full(k, b0)
        b1 = _check_exponent(self.beta_end, "beta_end")
        return np.linspace(b0, b1, k) if k > 1 else np.array([b0])

    def fit(self, X, *, X_train=None, y_train=None, X_target=None, force_norms=None) -> GGFPS:
        """Select from the pool.

        Parameters
        ----------
        X : array (n_candidates, n_features) or DesignBlocks
            Structure features (for DesignBlocks, the energy rows).
        X_train : array (n_train, n_features) or DesignBlocks, optional
            Already labelled structures, treated as already selected (no draw:
            the first pick is then the best-scoring row).
        y_train : ignored
            Label-free: the scores use force norms of a cheap model, not labels.
        X_target : None
            Not used (``uses_target`` is False): passing one raises InputError.
        force_norms : array (n_candidates,)
            ‖F_j‖ of every pool configuration, eV/Å; finite, >= 0. Required.

        Returns
        -------
        self

        Raises
        ------
        InputError
            See the class docstring.
        """
        X, X_train, k = self._validate(X, X_train, X_target)
        g = check_force_norms(force_norms, len(X))
        betas = self._schedule(k)
        if np.any(betas < 0) and np.any(g == 0):
            raise InputError("a negative beta with a zero force norm gives an infinite weight: "
                             "use beta >= 0 or strictly positive force norms")
        dev = resolve_device(self.device)
        start = None
        if X_train is None or len(X_train) == 0:
            rng = np.random.default_rng(self.random_state)
            total = g.sum()
            start = int(rng.choice(len(X), p=g / total)) if total > 0 else int(rng.integers(len(X)))
        if len(set(betas.tolist())) <= 1 and use_lazy(self.lazy, dev, k, MAX_LAZY_FPS_PICKS):  # a constant β keeps scores falling
            with np.errstate(divide="ignore"):
                weights = g ** betas[0]
            picks, gains, d2, self.n_rescored_ = lazy_fps(np.asarray(X, dtype=float), X_train, k, start, weights)
        else:
            hooks = _GGFPSHooks(as_tensor(X, dev), None if start is not None else as_tensor(X_train, dev),
                                as_tensor(g, dev), betas.tolist())
            picks, gains = greedy_select(hooks, k, first=start)
            d2 = hooks.d2.cpu().numpy()
        if start is not None:
            gains[0] = np.inf  # 0 · inf is NaN for a zero-norm start; the start has no set to be far from
        self._set_selection(picks, np.clip(gains, 0.0, None))
        self.hausdorff_ = np.sqrt(np.clip(d2, 0.0, None))
        self.betas_ = betas
        return self
