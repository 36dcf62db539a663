"""oed: optimal experimental design for machine-learning interatomic potentials.

The :mod:`oed` package is pure, label-free mathematics: structure features
(SOAP), information matrices and selectors that rank an unlabelled pool. The
outside world (DFT labels, model fits, the active-learning loop) lives in the
sibling package :mod:`loops`.
"""

__version__ = "0.1.0"
