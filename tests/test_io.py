"""oed.io's atomic writers: whole files or none, no temporary files left, safe under concurrent writers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ase.build import molecule

from oed.errors import InputError
from oed.io import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    read_structures,
    reference_energy,
    write_structures,
)


def test_text_and_bytes_are_complete_and_leave_only_the_file(tmp_path):
    path = tmp_path / "deep" / "folder" / "notes.md"  # missing folders are made
    text = "σ ± 1.5 meV/Å\n" * 10_000
    atomic_write_text(path, text)
    assert path.read_text(encoding="utf-8") == text
    data = bytes(range(256)) * 4000
    atomic_write_bytes(path, data)  # replaces the text
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["notes.md"]


def test_structures_round_trip(tmp_path):
    frames = [molecule("CH3CH2OH"), molecule("CH3OH")]
    frames[0].info["REF_energy"] = -97.5
    frames[1].info["config_type"] = "methanol"
    path = tmp_path / "pool.xyz"
    write_structures(path, frames)
    back = read_structures(path)
    assert [a.get_chemical_formula() for a in back] == ["C2H6O", "CH4O"]
    np.testing.assert_allclose(back[0].positions, frames[0].positions, atol=1e-8)
    assert reference_energy(back[0]) == -97.5 and back[1].info["config_type"] == "methanol"
    assert [p.name for p in tmp_path.iterdir()] == ["pool.xyz"]


@pytest.mark.parametrize("old", [None, "previous version\n"])
def test_an_error_while_writing_keeps_the_old_file_and_no_temporary(tmp_path, old):
    path = tmp_path / "results.csv"
    if old is not None:
        path.write_text(old)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path) as fh:
            fh.write("half of a new ver")
            raise RuntimeError("disk on fire")
    assert (path.read_text() if path.exists() else None) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if old is None else ["results.csv"])


def test_a_failing_encoder_or_writer_leaves_nothing_behind(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "fine so far " + "\udcff")  # a lone surrogate cannot be encoded
    with pytest.raises(Exception):  # noqa: B017 - whatever ase raises for a non-Atoms frame
        write_structures(tmp_path / "pool.xyz", [molecule("H2O"), "not a structure"])
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_concurrent_writers_leave_one_complete_version(tmp_path):
    path = tmp_path / "shared.txt"
    n_threads, size = 8, 400_000
    versions = [chr(ord("a") + k) * size for k in range(n_threads)]
    start = threading.Barrier(n_threads)
    errors = []

    def write(k: int) -> None:
        try:
            start.wait()
            for _ in range(5):
                atomic_write_text(path, versions[k])
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_text() in versions  # one writer's whole text, never a mix or a prefix
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_atomic_open_rejects_other_modes(tmp_path):
    for mode in ("a", "r", "w+"):
        with pytest.raises(InputError, match="mode"):
            with atomic_open(tmp_path / "x", mode):
                pass
    assert list(tmp_path.iterdir()) == []
