"""Compiled (AOTInductor) inference of a NequIPPotential: agreement with eager (energies, forces,
stress, latent features) on single frames and batches of different sizes, the calculator path,
the weights-digest staleness rule, and eager fallback when compiling or evaluating fails.

Tolerance: the model is float64; AOTInductor only reorders/fuses the same float64 operations, so
compiled and eager differ by a few ulps (measured ~1e-15 relative). 1e-9 (eV, eV/Å, eV/Å³,
features; relative to max(1, |value|)) leaves six orders of margin and still catches any real
mistake (wrong weights, wrong field, wrong frame split), which is O(1e-2) or more.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import threading

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from otf_statcut.mlip import ModelConfig, NequIPPotential
from otf_statcut.mlip.compiled import (
    CompiledManager,
    CompiledModel,
    CompileError,
    weights_digest,
)
from otf_statcut.mlip.graphs import DataStatistics

TOL = 1e-9


def _potential(seed: int = 0) -> NequIPPotential:
    config = ModelConfig(species=("Li",), r_max=4.0, num_layers=1, l_max=1, num_features=4,
                         radial_mlp_width=8, model_dtype="float64", seed=seed)
    stats = DataStatistics(energy_shifts={"Li": -1.9}, energy_scales={"Li": 0.5}, avg_num_neighbors=14.0)
    return NequIPPotential(config, stats)


def _frames() -> list[Atoms]:
    rng = np.random.default_rng(3)
    frames = []
    for reps in [(2, 2, 2), (1, 1, 2), (3, 2, 2)]:  # 16, 4, 24 atoms
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat(reps)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        frames.append(atoms)
    cluster = bulk("Li", "bcc", a=3.44, cubic=True).repeat((2, 1, 1))  # non-periodic, 4 atoms
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    frames.append(cluster)
    return frames


def _perturb(potential: NequIPPotential, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in potential.model.parameters():
            if p.dtype.is_floating_point and p.numel() > 1:
                p.add_(scale * torch.ones_like(p))
                return


def _eager(potential, frames, **kw):
    saved, potential._compiled = potential._compiled, None
    try:
        return potential.predict(frames, **kw)
    finally:
        potential._compiled = saved


def _assert_close(pred, ref):
    assert abs(pred.energy - ref.energy) <= TOL * max(1.0, abs(ref.energy))
    np.testing.assert_allclose(pred.forces, ref.forces, rtol=0, atol=TOL * max(1.0, np.abs(ref.forces).max()))
    np.testing.assert_allclose(pred.features, ref.features, rtol=0,
                               atol=TOL * max(1.0, np.abs(ref.features).max()))
    if ref.stress is None:
        assert pred.stress is None
    else:
        np.testing.assert_allclose(pred.stress, ref.stress, rtol=0, atol=TOL * max(1.0, np.abs(ref.stress).max()))


# ------------------------------------------------------------------------------ real compile
@pytest.fixture(scope="module")
def compiled_potential(tmp_path_factory):
    potential = _potential()
    manager = potential.enable_compiled(mode="blocking", workdir=tmp_path_factory.mktemp("aoti"),
                                        example=_frames()[:2])
    status = potential.compiled_status()
    assert status["state"] == "ready", status
    yield potential
    potential.disable_compiled()
    assert manager is not None


@pytest.mark.slow
def test_compiled_matches_eager_single_frames_and_batches(compiled_potential):
    potential = compiled_potential
    frames = _frames()
    calls = potential._compiled.n_compiled_calls
    for atoms in frames:  # single frames, periodic and not
        (pred,) = potential.predict(atoms)
        (ref,) = _eager(potential, atoms)
        _assert_close(pred, ref)
    batch = potential.predict(frames, batch_size=len(frames))  # 16, 4, 24, 4 atoms in one batch
    for pred, ref in zip(batch, _eager(potential, frames)):
        _assert_close(pred, ref)
    assert potential._compiled.n_compiled_calls == calls + len(frames) + 1
    status = potential.compiled_status()
    assert status["check"]["max_relative_difference"]["forces"] < TOL
    assert status["compile_seconds"] and status["compile_seconds"][0] > 0


@pytest.mark.slow
def test_calculator_uses_compiled_model(compiled_potential):
    potential = compiled_potential
    atoms = _frames()[2].copy()
    atoms.calc = potential.calculator()
    calls = potential._compiled.n_compiled_calls
    forces, energy = atoms.get_forces(), atoms.get_potential_energy()
    features = atoms.calc.results["features"]
    assert potential._compiled.n_compiled_calls == calls + 1
    (ref,) = _eager(potential, atoms)
    assert abs(energy - ref.energy) <= TOL * max(1.0, abs(ref.energy))
    np.testing.assert_allclose(forces, ref.forces, rtol=0, atol=TOL)
    np.testing.assert_allclose(features, ref.features, rtol=0, atol=TOL)
    np.testing.assert_allclose(atoms.get_stress(), ref.stress, rtol=0, atol=TOL)


@pytest.mark.slow
def test_stale_compiled_model_is_not_used(compiled_potential, tmp_path):
    """The real compiled model of the old weights is never used for new weights: eager runs
    (while the new weights 'compile': a compiler that waits), and the stale model is discarded."""
    potential = compiled_potential.copy()
    old = compiled_potential._compiled.model()
    release = threading.Event()

    def compiler(snap, path):
        if snap.digest == old.digest:
            return dataclasses.replace(old, path=tmp_path / "old.nequip.pt2")  # (the file is not needed)
        release.wait(60)
        raise CompileError("cancelled by the test")

    manager = CompiledManager(potential, mode="background", compiler=compiler)
    potential._compiled = manager
    manager.refresh()
    assert manager.wait(60) and manager.status()["state"] == "ready"
    frames = _frames()[:2]
    before = potential.predict(frames)
    assert manager.n_compiled_calls == 1
    _perturb(potential)
    after = potential.predict(frames)
    status = potential.compiled_status()
    assert status["state"] == "compiling" and status["n_discarded"] == 1
    assert manager.n_compiled_calls == 1 and manager.n_eager_calls == 1
    for pred, ref, old_pred in zip(after, _eager(potential, frames), before):
        _assert_close(pred, ref)
        assert np.abs(pred.forces - old_pred.forces).max() > 1e-6  # the weights did change
    release.set()
    potential.disable_compiled()


# ------------------------------------------------------------------------------ policy (no compile)
def test_result_for_weights_that_changed_while_compiling_is_discarded():
    potential = _potential()
    started, release = threading.Event(), threading.Event()
    digests = []

    def compiler(snap, path):
        digests.append(snap.digest)
        started.set()
        release.wait(30)
        return CompiledModel(path, snap.digest, snap.device, 0.0, _runner=lambda inputs: 1 / 0)

    manager = potential.enable_compiled(mode="background", compiler=compiler)
    assert started.wait(30)
    _perturb(potential)
    potential.predict(_frames()[:1])  # new weights: the running job is cancelled, a new one starts
    assert len(digests) in (1, 2) and manager.status()["compiling_for_current"]
    release.set()
    assert manager.wait(30)
    assert len(digests) == 2 and digests[0] != digests[1]
    assert manager.n_discarded == 1 and manager.n_compiled == 1
    assert manager.status()["state"] == "ready"
    potential.disable_compiled()


def test_failing_compilation_falls_back_to_eager_and_logs_once(monkeypatch, caplog):
    """The real child process, told to fail: eager results, one warning, no retry per retrain."""
    monkeypatch.setenv("OTF_STATCUT_COMPILE_FAIL", "1")
    potential = _potential()
    frames = _frames()[:2]
    with caplog.at_level(logging.WARNING, logger="otf_statcut.mlip.compiled"):
        manager = potential.enable_compiled(mode="blocking")
        preds = potential.predict(frames)
        _perturb(potential)  # a 'retrain': no new compilation is attempted
        preds2 = potential.predict(frames)
    status = potential.compiled_status()
    assert status["state"] == "failed" and "forced failure" in status["reason"]
    warnings = [r for r in caplog.records if r.name == "otf_statcut.mlip.compiled"]
    assert len(warnings) == 1 and "eager" in warnings[0].getMessage()
    assert manager.n_eager_calls == 2 and manager.n_compiled_calls == 0
    for pred, ref in zip(preds2, _eager(potential, frames)):
        _assert_close(pred, ref)
    assert preds[0].energy != preds2[0].energy
    potential.disable_compiled()
    assert potential.compiled_status() == {"state": "off"}


def test_failing_compiled_evaluation_falls_back_to_eager(caplog):
    potential = _potential()

    def compiler(snap, path):
        return CompiledModel(path, snap.digest, snap.device, 0.0, _runner=lambda inputs: 1 / 0)

    frames = _frames()[:1]
    with caplog.at_level(logging.WARNING, logger="otf_statcut.mlip.compiled"):
        potential.enable_compiled(mode="blocking", compiler=compiler)
        (pred,) = potential.predict(frames)
        potential.predict(frames)
    (ref,) = _eager(potential, frames)
    _assert_close(pred, ref)
    assert potential.compiled_status()["state"] == "failed"
    assert len([r for r in caplog.records if r.name == "otf_statcut.mlip.compiled"]) == 1


def test_weights_digest_and_pickling():
    a, b = _potential(), _potential()
    assert weights_digest(a.model) == weights_digest(b.model)
    _perturb(b)
    assert weights_digest(a.model) != weights_digest(b.model)
    a.enable_compiled(mode="background", compiler=lambda snap, path: (_ for _ in ()).throw(CompileError("x")))
    # a manager (threads, child processes, loaded .so) does not travel: it unpickles as None
    assert pickle.loads(pickle.dumps(a._compiled)) is None
    a.disable_compiled()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        _potential().enable_compiled(mode="sometimes")
