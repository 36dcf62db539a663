"""LCMD: largest-cluster maximum-distance batches in the model's posterior kernel."""

from __future__ import annotations

import numpy as np

from oed._torch import resolve_device
from oed.information import DEFAULT_PRIOR_PRECISION
from oed.selectors._base import SelectorBase
from oed.selectors._greedy import check_reg, greedy_select
from oed.selectors._posterior import nearest_centre, posterior_features
from oed.selectors.fps import _squared_norms


class _LCMDHooks:
    """Greedy hooks of LCMD: every pool point belongs to its nearest centre (training row or pick)."""

    def __init__(self, Z, Z_train) -> None:
        self.Z, self.Z_train = Z, Z_train
        self.n_candidates, self.device = len(Z), Z.device

    def start(self) -> None:
        import torch

        self.norms = _squared_norms(self.Z)
        n = len(self.Z)
        if self.Z_train is None:
            self.n_centres = 0
            self.d2 = torch.full((n,), torch.inf, dtype=self.Z.dtype, device=self.device)
            self.owner = torch.zeros(n, dtype=torch.long, device=self.device)
        else:
            self.n_centres = len(self.Z_train)
            self.d2, self.owner = nearest_centre(self.Z, self.norms, self.Z_train)

    def score(self):
        import torch

        if self.n_centres == 0:  # no centre yet: the largest posterior variance starts (bmdal_reg does the same)
            return self.norms.clone()
        mass = torch.bincount(self.owner, weights=self.d2, minlength=self.n_centres)
        if float(mass.max()) <= 0.0:  # every point sits on a centre (duplicates): plain distances
            return self.d2.clone()
        biggest = torch.argmax(mass)
        return torch.where(self.owner == biggest, self.d2, torch.tensor(-torch.inf, device=self.device))

    def update(self, j: int) -> None:
        import torch

        new_d2 = (self.norms + self.norms[j] - 2.0 * (self.Z @ self.Z[j])).clamp_(min=0.0)
        new_d2[j] = 0.0
        closer = new_d2 < self.d2
        self.owner[closer] = self.n_centres
        torch.minimum(self.d2, new_d2, out=self.d2)
        self.n_centres += 1


class LCMD(SelectorBase):
    """Largest cluster, maximum distance (LCMD) in posterior-transformed features.

    Every pool point belongs to its nearest *centre* — a labelled configuration or an earlier
    pick — in the posterior kernel of the linear-Gaussian model behind the features
    (``oed.selectors._posterior``: k_post(x, x') = φ(x)ᵀ Σ φ(x'), Σ the posterior covariance
    after the training blocks, force rows included). Each step takes the cluster with the
    largest sum of squared distances to its centre, and in it the point farthest from that
    centre; that point becomes a centre. Without training rows the first pick is the point of
    largest posterior variance. So a batch goes where the unexplained *mass* is — many poorly
    covered configurations, not one far-out point — which is what separates it from FPS (the
    single farthest point) and from pure uncertainty sampling (the top variances, often
    neighbours). Holzmüller et al. found LCMD the best of their batch methods on 15
    regression benchmarks.

    Parameters
    ----------
    n_to_select : int
        Batch size k (truncated, with a warning, to the pool size).
    reg : float, default :data:`~oed.information.DEFAULT_PRIOR_PRECISION` (1.0)
        Prior precision λ of the features (Λ₀ = λI): use 1 in a space whitened by the GAP's
        own K_MM/δ² prior (feature spaces ``gap-gp`` and ``gap-gp+forces``).
    device : str, default "auto"

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
        Pool indices in pick order.
    gains_ : ndarray of float, shape (n_selected_,)
        Squared posterior distance of each pick to its cluster's centre, in units of the label
        noise (‖z‖²: predictive variance / σ² for the first pick without training rows).
    n_selected_ : int

    Raises
    ------
    InputError
        From :meth:`fit`: bad shapes or values, an empty pool, a non-positive ``reg``, an ``X_target``.

    References
    ----------
    D. Holzmüller, V. Zaverkin, J. Kästner & I. Steinwart, "A framework and benchmark for deep
    batch active learning for regression", JMLR 24(164), 1–81 (2023), §5 (LCMD) and §4.3
    (posterior transformation).

    Examples
    --------
    The largest-variance point starts; every other point is then in its cluster, and the
    member farthest from it comes next.

    >>> import numpy as np
    >>> X = np.array([[5.0, 0.0], [0.0, 1.0], [0.0, 1.1], [0.1, 1.0], [0.1, 1.1], [0.05, 0.9]])
    >>> LCMD(2).fit(X).selected_idx_.tolist()
    [0, 2]
    """

    uses_prior_precision = True
    gains_unit = "posterior distance²"

    def __init__(self, n_to_select: int, *, reg: float = DEFAULT_PRIOR_PRECISION, device: str = "auto") -> None:
        self.n_to_select = n_to_select
        self.reg = reg
        self.device = device

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> LCMD:
        """Select a batch from the pool.

        Parameters
        ----------
        X : array (n_candidates, n_features) or DesignBlocks
            Pool; candidates are represented by their energy rows.
        X_train : array (n_train, n_features) or DesignBlocks, optional
            Labelled configurations: their blocks condition the posterior and their energy rows
            are the first centres.
        y_train : ignored
            Label-free.
        X_target : None
            Not used: passing one raises InputError.

        Returns
        -------
        self
        """
        X, X_train, k = self._validate(X, X_train, X_target, blocks=True)
        reg = check_reg(self.reg)
        dev = resolve_device(self.device)
        Z, Z_train = posterior_features(X, X_train, reg=reg, device=dev)
        picks, gains = greedy_select(_LCMDHooks(Z, Z_train), k)
        self._set_selection(picks, np.asarray(gains, dtype=float))
        return self
