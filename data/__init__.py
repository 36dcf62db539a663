"""The data bundled with oed, installed as the package ``oed_data`` (this folder).

Real configurations with published DFT labels, so that ``oed demo``, the tests and
the tutorials run with no download. In a source checkout they live in ``data/``;
pyproject.toml maps that folder to the import name ``oed_data`` so that a regular
(non-editable) ``pip install .`` carries them too, and :func:`path` finds them
through :func:`importlib.resources.files` wherever oed is installed. Sources,
level of theory and licence (MIT, BOTNet datasets of Kovács et al.): ``README.md``
and ``LICENSE-BOTNet-datasets`` next to this file (``oed data README.md`` prints
where).

Examples
--------
>>> import oed_data
>>> oed_data.path("ethanol/train.xyz").name
'train.xyz'
>>> sorted(oed_data.CONTENTS)[0]
'3bpa/iso_atoms.xyz'
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: Every bundled file, relative to the package root, with what it is. Energies are
#: in eV and forces in eV/Å; the ethanol and 3BPA files carry the published labels
#: under the info key ``energy`` and the array ``forces`` (the ``ethanol_pyscf``
#: relabels under ``REF_energy`` / ``REF_forces``). Counts are configurations.
CONTENTS: dict[str, str] = {
    "ethanol/train.xyz": "1000 rMD17 ethanol configurations (MD, 500 K), PBE/def2-SVP energies and forces: "
                         "the demo's pool",
    "ethanol/test_MD.xyz": "1000 further rMD17 ethanol configurations, energies and forces: in distribution",
    "ethanol/test_norm_mode_874.xyz": "37 displacements along the 874 cm⁻¹ normal mode: out of distribution, "
                                      "energies only",
    "ethanol/test_norm_mode_3005.xyz": "18 displacements along the 3005 cm⁻¹ normal mode: out of distribution, "
                                       "energies only",
    "ethanol/test_H_removal.xyz": "60 configurations with the O–H bond stretched to breaking: far out of "
                                  "distribution, energies only",
    "ethanol/isolated_atoms.xyz": "isolated-atom energies (H, C, N, O) published with the ethanol set",
    "ethanol/train_eth_meth.xyz": "1300 configurations: 1000 ethanol + 300 methanol (config_type ethanol / "
                                  "methanol), energies and forces",
    "ethanol/test_eth_meth.xyz": "1145 configurations: 1000 ethanol (= test_MD) + 145 methanol, energies "
                                 "and forces",
    "ethanol_pyscf/test_norm_mode_874.xyz": "the 874 cm⁻¹ normal-mode set relabelled with PySCF RKS "
                                            "PBE/def2-SVP: REF_energy and REF_forces",
    "ethanol_pyscf/test_norm_mode_3005.xyz": "the 3005 cm⁻¹ normal-mode set relabelled with PySCF RKS "
                                             "PBE/def2-SVP: REF_energy and REF_forces",
    "3bpa/train_300K.xyz": "500 3-(benzyloxy)pyridin-2-amine configurations from MD at 300 K, "
                           "ωB97X/6-31G(d) energies and forces",
    "3bpa/train_mixedT.xyz": "500 3BPA configurations from MD at 300, 600 and 1200 K mixed (31 shared "
                             "with train_300K), energies and forces",
    "3bpa/iso_atoms.xyz": "isolated-atom energies (H, C, N, O) at ωB97X/6-31G(d)",
    "README.md": "sources, citations, level of theory and measurement notes",
    "LICENSE-BOTNet-datasets": "licence of the ethanol and 3BPA files (MIT, © 2022 davkovacs)",
}


def root() -> Path:
    """Folder of the bundled data, wherever oed is installed.

    Returns
    -------
    pathlib.Path
        Absolute path of the ``oed_data`` package folder.

    Raises
    ------
    oed.errors.InputError
        If the package is not a plain folder on disk (e.g. imported from a zip file),
        so its files have no path that another program could open.
    """
    base = files(__name__)
    # A regular package installed by pip (editable or not) is a folder: files()
    # returns a pathlib.Path. Anything else (a zip import) has no stable path.
    if not isinstance(base, Path):
        from oed.errors import InputError

        raise InputError(f"oed_data is not installed as a folder ({base!r}): reinstall oed with pip")
    return base.resolve()


def path(name: str) -> Path:
    """Absolute path of one bundled file or folder.

    Parameters
    ----------
    name : str
        Path relative to the data root, e.g. ``"ethanol/train.xyz"`` (a key of
        :data:`CONTENTS`) or a folder such as ``"ethanol"``.

    Returns
    -------
    pathlib.Path
        The absolute path; it exists.

    Raises
    ------
    oed.errors.InputError
        If nothing of that name is bundled; the message lists what is.
    """
    base = root()
    target = (base / name).resolve()
    # Names must stay inside the package ("../" would reach the install tree) and exist.
    if base not in (target, *target.parents) or not target.exists() or target.name.startswith("__"):
        from oed.errors import InputError

        raise InputError(f"no bundled data named {name!r}; bundled files: {', '.join(sorted(CONTENTS))}")
    return target
