"""k-means++ seeding as a batch selector, in the model's posterior kernel."""

from __future__ import annotations

import numpy as np

from oed._torch import resolve_device
from oed.errors import InputError
from oed.information import DEFAULT_PRIOR_PRECISION
from oed.selectors._base import SelectorBase
from oed.selectors._greedy import check_reg
from oed.selectors._posterior import nearest_centre, posterior_features
from oed.selectors.fps import _squared_norms


class KMeansPPPosterior(SelectorBase):
    """k-means++ seeding in posterior-transformed features: picks drawn ∝ squared distance.

    Each pick is drawn with probability proportional to its squared distance, in the
    posterior kernel k_post(x, x') = φ(x)ᵀ Σ φ(x') (``oed.selectors._posterior``), to the
    nearest labelled configuration or earlier pick; without training rows the first pick is
    uniform. A randomised middle ground between FPS (always the farthest point) and random
    picks (distance ignored): the draw favours poorly covered regions in proportion to how
    poorly they are covered, and regions in proportion to how many points they hold.

    Parameters
    ----------
    n_to_select : int
        Batch size k (truncated, with a warning, to the pool size).
    reg : float, default :data:`~oed.information.DEFAULT_PRIOR_PRECISION` (1.0)
        Prior precision λ of the features (Λ₀ = λI); 1 in the ``gap-gp`` spaces.
    random_state : int, numpy.random.Generator or None, default None
    device : str, default "auto"

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
    gains_ : ndarray of float, shape (n_selected_,)
        Squared posterior distance of each pick to the nearest centre when drawn (noise units;
        ∞ for a first pick without training rows).
    n_selected_ : int

    Raises
    ------
    InputError
        From :meth:`fit`: bad shapes or values, an empty pool, a non-positive ``reg``, an ``X_target``.

    References
    ----------
    D. Arthur & S. Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007;
    as a batch active-learning method in posterior features: Holzmüller, Zaverkin, Kästner &
    Steinwart, JMLR 24(164) (2023).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(50, 3))
    >>> sel = KMeansPPPosterior(5, random_state=0).fit(X)
    >>> len(set(sel.selected_idx_.tolist()))
    5
    """

    uses_prior_precision = True
    uses_random_state = True
    gains_unit = "posterior distance²"

    def __init__(self, n_to_select: int, *, reg: float = DEFAULT_PRIOR_PRECISION, random_state=None,
                 device: str = "auto") -> None:
        self.n_to_select = n_to_select
        self.reg = reg
        self.random_state = random_state
        self.device = device

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> KMeansPPPosterior:
        """Draw a batch from the pool (energy rows of ``X``; ``X_train`` conditions and seeds it).

        Returns
        -------
        self
        """
        import torch

        X, X_train, k = self._validate(X, X_train, X_target, blocks=True)
        reg = check_reg(self.reg)
        rng = np.random.default_rng(self.random_state)
        dev = resolve_device(self.device)
        Z, Z_train = posterior_features(X, X_train, reg=reg, device=dev)
        norms = _squared_norms(Z)
        n = len(Z)
        if Z_train is None:
            d2 = torch.full((n,), torch.inf, dtype=Z.dtype, device=dev)
        else:
            d2, _ = nearest_centre(Z, norms, Z_train)
        taken = np.zeros(n, dtype=bool)
        picks, gains = [], []
        for _ in range(k):
            weights = d2.cpu().numpy().copy()
            weights[taken] = 0.0
            if np.isinf(weights).any():  # no centre yet: uniform over what is left
                weights = (~taken).astype(float)
            total = weights.sum()
            if not np.isfinite(total):
                raise InputError("k-means++ weights are not finite: check the features")
            if total <= 0.0:  # every remaining point sits on a centre (duplicates): uniform
                weights, total = (~taken).astype(float), float((~taken).sum())
            j = int(rng.choice(n, p=weights / total))
            picks.append(j)
            gains.append(float(d2[j]))
            taken[j] = True
            new_d2 = (norms + norms[j] - 2.0 * (Z @ Z[j])).clamp_(min=0.0)
            torch.minimum(d2, new_d2, out=d2)
        self._set_selection(np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=float))
        return self
