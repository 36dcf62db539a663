"""Labelling overhead of the loop: oed's PySCF labels through a LabelBook against bare PySCF.

Both label the same ethanol configurations (``data/ethanol/train.xyz``) at PBE/def2-SVP with
density fitting, conv_tol 1e-9 Ha, energy and nuclear gradient, on one process each, in the
same run, one after the other (bare first):

- **bare**: ``pyscf.gto.M`` → ``dft.RKS(mol).density_fit()`` → ``kernel()`` → ``nuc_grad_method().kernel()``;
- **oed**: ``LabelBook(PySCFOracle(executor=Executor(workers=1)), labels.db, frames).labels(...)``,
  i.e. a spawned worker, the robust SCF route (fallbacks, stability analysis where the
  labeller's defaults ask for it), the ase.db commit of every label.

    python benchmarks/label_overhead.py             # 20 configurations
    python benchmarks/label_overhead.py --n 4       # quick look

Writes ``benchmarks/outputs/label_overhead.json`` and prints the ratio oed / bare (goal ≤ 1.2).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def bare_label(atoms, xc: str = "pbe", basis: str = "def2-svp") -> float:
    """Seconds for one bare PySCF energy + gradient."""
    from pyscf import dft, gto

    t0 = time.perf_counter()
    mol = gto.M(atom=[(s, tuple(r)) for s, r in zip(atoms.get_chemical_symbols(), atoms.positions)],
                unit="Angstrom", basis=basis, verbose=0)
    mf = dft.RKS(mol).density_fit()
    mf.xc, mf.conv_tol, mf.max_cycle = xc, 1e-9, 100
    mf.kernel()
    assert mf.converged
    mf.nuc_grad_method().kernel()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="configurations (default 20)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "outputs" / "label_overhead.json")
    args = parser.parse_args()

    from pyscf import lib

    from loops.oracles import LabelBook, PySCFOracle, bare
    from loops.parallel import Executor
    from oed.io import atomic_write_text, read_structures

    lib.num_threads(1)  # the worker runs single-threaded too (Executor limits its threads)
    frames = [bare(a, i) for i, a in enumerate(read_structures(ROOT / "data" / "ethanol" / "train.xyz"))]
    frames = [frames[i] for i in np.linspace(0, len(frames) - 1, args.n).astype(int)]
    bare_seconds = [bare_label(a) for a in frames]
    with tempfile.TemporaryDirectory() as tmp:
        book = LabelBook(PySCFOracle(executor=Executor(workers=1, progress=False)), Path(tmp) / "labels.db", frames)
        t0 = time.perf_counter()
        labels = book.labels(range(len(frames)))
        oed_seconds = time.perf_counter() - t0
    failed = sum(v is None for v in labels.values())
    result = {
        "n": len(frames), "bare_seconds": round(sum(bare_seconds), 2), "oed_seconds": round(oed_seconds, 2),
        "ratio": round(oed_seconds / sum(bare_seconds), 3), "failed": failed,
        "bare_per_label_s": round(float(np.mean(bare_seconds)), 2),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
