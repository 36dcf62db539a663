"""The model protocol and registry, settings checks, and the shared fit plumbing (loops.fitting).

Subprocesses here are real (small Python programs run by FitProgram); GAP and MACE themselves
are tested in test_gap.py and test_mace.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read

from loops.errors import ModelFitError, SetupError
from loops.fitting import (
    FitPlan, FitProgram, SubprocessModel, check_elements, clear_fit_files, forget_fit, program_env,
    remove_fit_dir, training_frames,
)
from loops.models import REGISTRY, Model, ModelWithVariance, available, make_model, model_class, training_frame
from loops.settings import (
    FINGERPRINT, boolean, check_fields, choice, fingerprint_fields, int_tuple, integer, nonnegative_real,
    optional, positive_real, real_in,
)
from oed.errors import InputError, NotFittedError, UnknownElementError

DATA = Path(__file__).parent.parent / "data" / "ethanol"
PY = sys.executable


@pytest.fixture(scope="module")
def frames() -> list[Atoms]:
    return read(DATA / "train.xyz", ":3")


# -- settings checks -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Config:
    width: float = 1.0
    count: int = 2
    mode: str = "fast"
    flag: bool = True
    fraction: float = 0.5
    layers: tuple[int, ...] = (8, 8)
    limit: float | None = dataclasses.field(default=None, metadata={FINGERPRINT: False})


RULES = {
    "width": positive_real(), "count": integer(1), "mode": choice(("fast", "slow")), "flag": boolean(),
    "fraction": real_in(0, 1), "layers": int_tuple(1), "limit": optional(positive_real()),
}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("width", 0.0, "_Config.width must be a positive finite number, got 0.0"),
        ("width", float("inf"), "a positive finite number"),
        ("width", True, "a positive finite number"),  # a bool is not a number here
        ("count", 2.0, "_Config.count must be an integer >= 1, got 2.0"),
        ("count", False, "an integer >= 1"),
        ("mode", "FAST", "_Config.mode must be one of fast, slow, got 'FAST'"),
        ("flag", 1, "_Config.flag must be True or False, got 1"),
        ("fraction", 1.0, r"_Config.fraction must be in \[0, 1\), got 1.0"),
        ("layers", [8], "a non-empty tuple of integers >= 1"),
        ("layers", (), "a non-empty tuple of integers >= 1"),
        ("limit", -1, "_Config.limit must be None or a positive finite number, got -1"),
    ],
)
def test_check_fields_names_field_rule_and_value(field, value, message):
    bad = dataclasses.replace(_Config(), **{field: value})
    with pytest.raises(InputError, match=message):
        check_fields(bad, RULES)
    with pytest.raises(SetupError):
        check_fields(bad, RULES, error=SetupError)


def test_check_fields_accepts_numpy_scalars_and_none():
    check_fields(_Config(width=np.float32(2.0), count=np.int64(3), flag=np.bool_(False), limit=None), RULES)
    check_fields(_Config(limit=10), RULES)
    assert not nonnegative_real().check(-0.1) and nonnegative_real().check(0)
    assert real_in(0, 1, low_open=True, high_open=False).check(1.0)
    assert not real_in(0, 1, low_open=True).check(0.0)
    assert real_in(0, 1, low_open=True).what == "in (0, 1)"


def test_fingerprint_leaves_out_fields_that_change_no_result():
    assert fingerprint_fields(_Config(limit=3.0)) == fingerprint_fields(_Config())
    assert "limit" not in fingerprint_fields(_Config()) and fingerprint_fields(_Config())["count"] == 2
    with pytest.raises(InputError):
        fingerprint_fields(_Config)  # the class, not an instance


# -- registry and protocol -------------------------------------------------------------------------
def test_registry_and_make_model():
    assert available() == sorted(REGISTRY) == ["gap", "mace", "mace-ttt"]
    ttt = make_model("mace-ttt", seed=3)  # the two-head MACE of test-time training: MACE settings, default TTT
    assert type(ttt).__name__ == "TTTMACEModel" and ttt.settings.seed == 3 and ttt.ttt.steps == 10
    gap = make_model("gap", seed=4, n_sparse=10)
    assert type(gap) is model_class("gap") and gap.settings.rnd_seed == 5 and gap.settings.n_sparse == 10
    assert isinstance(gap, Model) and isinstance(gap, ModelWithVariance)
    with pytest.raises(InputError, match="no setting"):
        make_model("gap", bogus=1)
    with pytest.raises(InputError, match="unknown model"):
        model_class("nequip")


# -- training frames ---------------------------------------------------------------------------------
def test_training_frames_are_bare_checked_copies(frames):
    tagged = training_frame(0, frames[0])  # labels under REF_energy / REF_forces (a copy drops the calculator)
    tagged.info["config_type"] = "md"
    tagged.info["other"] = 1
    clean = training_frames([tagged, frames[1]], who="Toy.fit")
    assert clean[0].info["config_type"] == "md" and "other" not in clean[0].info
    assert clean[0].info["REF_energy"] == pytest.approx(frames[0].get_potential_energy())
    assert "config_type" in clean[1].info and training_frame(0, frames[0]).calc is None
    with pytest.raises(InputError, match="no training configurations given to Toy.fit"):
        training_frames([], who="Toy.fit")
    bare = Atoms(frames[2].numbers, frames[2].positions)
    with pytest.raises(InputError, match="training configuration 1 has no reference energy and forces"):
        training_frames([frames[0], bare], who="Toy.fit")


def test_check_elements():
    check_elements([Atoms("H2O")], ("H", "O"), model="toy")
    with pytest.raises(UnknownElementError, match=r"configuration 1 holds element\(s\) C .* \(fitted on H, O\)"):
        check_elements([Atoms("H2O"), Atoms("CH4")], ("H", "O"), model="toy")
    with pytest.raises(InputError, match="configuration 0 has no atoms"):
        check_elements([Atoms()], ("H",), model="toy")


# -- running a fitting program ---------------------------------------------------------------------
def _program(**kw) -> FitProgram:
    return FitProgram(name="toy_fit", speaker="toy_fit", reasons=re.compile(r"^ERROR"), **kw)


def _run(tmp_path: Path, code: str, *, timeout_s: float | None = 30.0, program: FitProgram | None = None) -> None:
    (program or _program()).run([PY, "-c", code], cwd=tmp_path, log_path=tmp_path / "fit.log",
                                output=tmp_path / "out.txt", what="result", timeout_s=timeout_s)


def test_run_success_and_failures(tmp_path):
    _run(tmp_path, "open('out.txt', 'w').write('ok')")
    assert (tmp_path / "out.txt").read_text() == "ok"
    (tmp_path / "out.txt").unlink()
    with pytest.raises(ModelFitError, match="toy_fit exited 0 but wrote no result") as info:
        _run(tmp_path, "print('nothing')")
    assert "nothing" in str(info.value) and str(tmp_path / "fit.log") in str(info.value)
    code = "import sys; print('ERROR first'); print('step'); print('ERROR second'); sys.exit(3)"
    with pytest.raises(ModelFitError, match="toy_fit exited with status 3") as info:
        _run(tmp_path, code)
    assert "toy_fit says: ERROR second\n" in str(info.value)  # the last reason by default
    with pytest.raises(ModelFitError) as info:
        _run(tmp_path, code, program=_program(every_reason=True))
    assert "toy_fit says: ERROR first | ERROR second" in str(info.value)
    with pytest.raises(ModelFitError) as info:
        _run(tmp_path, "import sys; sys.exit(1)", program=_program(hint="\n(read {log})"))
    assert f"(read {tmp_path / 'fit.log'})" in str(info.value)
    with pytest.raises(SetupError, match="cannot run"):
        _program().run([str(tmp_path / "no_such_program")], cwd=tmp_path, log_path=tmp_path / "x.log",
                       output=tmp_path / "o", what="o", timeout_s=None)


def test_timeout_kills_the_whole_process_group(tmp_path):
    # the program starts a child of its own and writes part of its output: after the timeout
    # neither process may survive and the partial output must be gone
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "open('out.txt', 'w').write('partial')\n"
        "print('working', flush=True)\n"
        "time.sleep(60)\n"
    )
    t0 = time.perf_counter()
    with pytest.raises(ModelFitError, match=r"toy_fit did not finish within timeout_s=2 s and was killed") as info:
        _run(tmp_path, code, timeout_s=2.0)
    assert time.perf_counter() - t0 < 20
    assert "working" in str(info.value) and "fit.log" in str(info.value)
    assert not (tmp_path / "out.txt").exists()
    pid = int((tmp_path / "child.pid").read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            break  # killed, waiting for its parent to reap it
        time.sleep(0.1)
    else:
        pytest.fail(f"the program's child {pid} survived the timeout")


def test_program_env():
    env = program_env(threads=2, unset=("HOME",), MY_FLAG="1")
    assert "HOME" not in env and env["MY_FLAG"] == "1" and env["OMP_NUM_THREADS"] == "2"
    assert env["PATH"] == os.environ["PATH"]
    assert program_env().get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")


# -- fit files -------------------------------------------------------------------------------------
def test_clear_fit_files(tmp_path, pinned):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt").write_text("x")
    clear_fit_files([tmp_path / "a.txt", tmp_path / "run", tmp_path / "absent"])
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "run").exists()
    stuck = tmp_path / "stuck.xml"
    stuck.write_text("x")
    pinned(stuck)
    with pytest.raises(SetupError, match="cannot remove the files of an earlier fit") as info:
        clear_fit_files([stuck])
    assert str(stuck) in str(info.value)


def test_remove_fit_dir_warns_about_what_stays(tmp_path, pinned):
    work = tmp_path / "fit"
    work.mkdir()
    (work / "gap.xml").write_text("x")
    assert remove_fit_dir(work) == [] and not work.exists()
    assert remove_fit_dir(work) == []  # already gone: nothing to say
    work.mkdir()
    stuck = work / "gap.xml"
    stuck.write_text("x")
    pinned(stuck)
    with pytest.warns(RuntimeWarning, match="could not remove"):
        left = remove_fit_dir(work)
    assert stuck in left


# -- the shared fit ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _CopySettings:
    fail: bool = False
    timeout_s: float | None = 30.0

    def validate(self) -> None:
        check_fields(self, {"fail": boolean(), "timeout_s": optional(positive_real())}, error=SetupError)


class _CopyModel(SubprocessModel):
    """A real back-end in miniature: its 'fit' copies the training file (or fails on request)."""

    settings_class = _CopySettings
    program = FitProgram(name="copy_fit", speaker="copy_fit", reasons=re.compile("^ERROR"))
    log_file = "copy.log"
    fitted_file = "model_file_"
    caches = ("_cache",)

    def _plan(self, train, e0s, settings, work):
        code = "import sys; print('ERROR asked to fail'); sys.exit(2)" if settings.fail else (
            "import shutil; shutil.copy('train.xyz', 'model.xyz')")
        return FitPlan(argv=[PY, "-c", code], inputs={"train.xyz": train}, output="model.xyz", what="model",
                       stale=("model.xyz", "old.*"), fitted={"model_file_": work / "model.xyz",
                                                             "n_train_": len(train)})

    def predict(self, frames):
        self._check_fitted()
        return np.zeros(len(frames)), [np.zeros((len(a), 3)) for a in frames]


def test_subprocess_model_fit_refit_and_failure(frames, tmp_path):
    (tmp_path / "old.1").write_text("stale")
    model = _CopyModel().fit(frames, e0s={}, workdir=tmp_path)
    assert model.n_train_ == 3 and len(read(model.model_file_, ":")) == 3
    assert not (tmp_path / "old.1").exists() and (tmp_path / "copy.log").is_file()
    model._cache = object()
    assert "_cache" not in model.__getstate__()
    model.settings = _CopySettings(fail=True)
    with pytest.raises(ModelFitError, match="copy_fit exited with status 2") as info:
        model.fit(frames[:1], e0s={}, workdir=tmp_path)
    assert "copy_fit says: ERROR asked to fail" in str(info.value)
    assert not hasattr(model, "model_file_") and not hasattr(model, "_cache")  # unfitted, no stale state
    assert not (tmp_path / "model.xyz").exists()
    with pytest.raises(NotFittedError, match="this _CopyModel is not fitted yet: call fit"):
        model.predict(frames)
    with pytest.raises(InputError):  # bad frames: unfitted as well, before any file is touched
        _CopyModel().fit([Atoms("H")], e0s={}, workdir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_forget_fit():
    model = _CopyModel()
    model.model_file_, model.n_train_, model._cache, model._keep = 1, 2, 3, 4
    forget_fit(model, private=("_cache",))
    assert vars(model) == {"settings": None, "_keep": 4}
