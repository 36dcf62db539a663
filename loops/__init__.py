"""loops: everything that touches the outside world.

Reference labels (PySCF), model fitting (GAP via ``gap_fit``), evaluation and
the active-learning loop with its ase.db store. Imports :mod:`oed`; :mod:`oed`
never imports this package (only the command line sees both).
"""
