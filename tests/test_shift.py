"""Distribution-shift diagnostics (oed.shift) and ``oed shift``: known spectra, flags on real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from oed.descriptors import SOAPDescriptor
from oed.errors import InputError, NotFittedError
from oed.io import read_structures, reference_forces, write_structures
from oed.shift import ShiftDiagnostics, laplacian_spectrum, mean_force_norms

SMALL_SOAP = dict(n_max=3, l_max=2, r_cut=4.0)
OED = [str(Path(sys.executable).with_name("oed"))]


def oed(*args, check=True):
    proc = subprocess.run(OED + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"oed {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# ---------------------------------------------------------------- spectra
@pytest.mark.parametrize("n", [2, 3, 6, 9])
def test_complete_graph_spectrum(n):
    # atoms on a small circle: every pair closer than the cut-off, so the graph is K_n
    angles = 2 * np.pi * np.arange(n) / n
    atoms = Atoms("H" * n, positions=np.c_[np.cos(angles), np.sin(angles), np.zeros(n)])
    ev = laplacian_spectrum(atoms, cutoff=5.0)
    assert ev[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(ev[1:], n / (n - 1), atol=1e-12)


def test_path_graph_and_isolated_atoms():
    # a chain of 3 atoms 1 Å apart, cut-off 1.5 Å: the path P3 has eigenvalues 0, 1, 2
    chain = Atoms("H3", positions=[[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    np.testing.assert_allclose(laplacian_spectrum(chain, 1.5), [0.0, 1.0, 2.0], atol=1e-12)
    # no neighbour within the cut-off: every eigenvalue 0 (Chung's convention)
    np.testing.assert_allclose(laplacian_spectrum(chain, 0.5), [0.0, 0.0, 0.0], atol=1e-12)


def test_mean_force_norms():
    f = [np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])]
    assert mean_force_norms(f) == pytest.approx([3.0])
    with pytest.raises(InputError, match="configuration 0"):
        mean_force_norms([np.ones((2, 2))])


# ------------------------------------------------------------ diagnostics
@pytest.fixture(scope="module")
def fitted(ethanol_pool):
    train = ethanol_pool[:40]
    norms = mean_force_norms([reference_forces(a) for a in train])
    diag = ShiftDiagnostics(descriptor=SOAPDescriptor(species=["H", "C", "N", "O"], **SMALL_SOAP), max_reference=30)
    return diag.fit(train, force_norms=norms), train, norms


def test_training_configurations_are_not_shifted(fitted):
    diag, train, norms = fitted
    res = diag.score(train[:10], force_norms=norms[:10])
    np.testing.assert_allclose(res.values["feature"], 0.0, atol=1e-6)  # each one is its own nearest
    np.testing.assert_allclose(res.values["connectivity"], 0.0, atol=1e-12)
    assert not res.flagged["feature"].any() and not res.flagged["connectivity"].any()
    assert res.flagged_fraction["gamma"] == 0.0


def test_other_molecules_and_larger_forces_are_flagged(fitted, ethanol_dir):
    diag, train, norms = fitted
    methanol = [a for a in read_structures(ethanol_dir / "test_eth_meth.xyz") if a.info.get("config_type") == "methanol"][:8]
    res = diag.score(methanol, force_norms=np.full(8, norms.max() * 3))
    # a 6-atom complete graph has eigenvalue 6/5 where ethanol's 9-atom graphs have 9/8
    assert res.flagged_fraction["connectivity"] == 1.0
    assert res.flagged_fraction["feature"] == 1.0
    assert res.flagged_fraction["force_norm"] == 1.0
    assert res.flagged_fraction["any"] == 1.0
    # an element the training set never had: infinite feature distance and γ, not an error
    nh3 = molecule("NH3")
    nh3.center(vacuum=5.0)
    unseen = diag.score([nh3], force_norms=[np.nan])
    assert np.isinf(unseen.values["feature"][0]) and unseen.flagged["feature"][0]
    assert not unseen.flagged["force_norm"][0]  # unknown norm: never flagged


def test_in_distribution_md_is_flagged_less_than_stretched_bonds(fitted, ethanol_dir):
    diag, _, _ = fitted
    md = read_structures(ethanol_dir / "test_MD.xyz")[:40]
    h_removal = read_structures(ethanol_dir / "test_H_removal.xyz")[::4]
    md_res = diag.score(md, force_norms=mean_force_norms([reference_forces(a) for a in md]))
    hr_res = diag.score(h_removal, force_norms=np.full(len(h_removal), np.nan))
    assert md_res.flagged_fraction["feature"] < 0.5 * hr_res.flagged_fraction["feature"]
    assert np.median(hr_res.values["gamma"]) > 2 * np.median(md_res.values["gamma"])


def test_bad_use_is_refused(fitted, ethanol_pool):
    diag, train, norms = fitted
    with pytest.raises(NotFittedError):
        ShiftDiagnostics().score(train)
    with pytest.raises(InputError, match="both fit and score"):
        diag.score(train[:3])
    with pytest.raises(InputError, match="3 values"):
        diag.score(train[:3], force_norms=[1.0, 2.0])
    with pytest.raises(InputError, match="at least 2"):
        ShiftDiagnostics().fit(train[:1])
    with pytest.raises(InputError, match="cutoff"):
        ShiftDiagnostics(cutoff=0.0).fit(train)


# -------------------------------------------------------------------- CLI
def test_oed_shift_json_table_and_plot(ethanol_dir, tmp_path):
    train, md = tmp_path / "train.xyz", tmp_path / "md.xyz"
    write_structures(train, read_structures(ethanol_dir / "train.xyz")[:30])
    write_structures(md, read_structures(ethanol_dir / "test_MD.xyz")[:20])
    hr = ethanol_dir / "test_H_removal.xyz"
    res = json.loads(oed("shift", train, md, hr, "--forces", "gfn2-xtb", "--json", "--plot", tmp_path / "s.png").stdout)
    assert set(res["files"]) == {"md", "test_H_removal"}
    for stem, n in (("md", 20), ("test_H_removal", 60)):
        f = res["files"][stem]
        assert f["n"] == n
        assert set(f["flagged_fraction"]) == {"feature", "gamma", "force_norm", "connectivity", "any"}
        assert all(0.0 <= v <= 1.0 for v in f["flagged_fraction"].values())
        assert all(len(v) == n for v in f["values"].values())
    assert res["files"]["md"]["flagged_fraction"]["feature"] < res["files"]["test_H_removal"]["flagged_fraction"]["feature"]
    assert (tmp_path / "s.png").stat().st_size > 0
    text = oed("shift", train, md, "--forces", "labels").stdout
    assert "connectivity" in text and "md" in text
    bad = oed("shift", train, md, "--forces", "dft", check=False)
    assert bad.returncode == 2 and "--forces must be one of" in bad.stderr


# ------------------------------------------------------ radius refinement
def _chain(spacing: float, n: int = 4) -> Atoms:
    return Atoms("H" * n, positions=[[spacing * k, 0.0, 0.0] for k in range(n)])


def test_radius_refinement_picks_the_radius_that_restores_the_training_graph():
    from oed.shift import refined_radii

    train = [_chain(1.0), _chain(1.05), _chain(0.95)]  # paths P4 at the 1.5 Å cut-off
    diag = ShiftDiagnostics(descriptor=SOAPDescriptor(**SMALL_SOAP), cutoff=1.5).fit(train)
    squeezed = _chain(0.6)  # at 1.5 Å every atom sees two neighbours each side: not a path
    assert diag.score([squeezed]).flagged["connectivity"][0]
    # at 1.3 Å the second neighbours (1.2 Å) are still in; at 1.0 and 0.8 Å it is P4 again: ties keep the larger
    np.testing.assert_allclose(refined_radii(diag, [squeezed, _chain(1.0)], [1.5, 1.3, 1.0, 0.8]), [1.0, 1.5])
    with pytest.raises(InputError, match="candidate radii"):
        refined_radii(diag, [squeezed], [2.0])
