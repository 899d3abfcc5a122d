"""metalpy 0.2 itself on mepa: ``mepa.compat.metalpy.install()``, then metalpy's own code.

Runs when metalpy and its SimPEG stack are installed (``pip install ".[metalpy]"``, the CI step
``.ci/metalpy``); skipped otherwise. On every executor (linear, threads, loky processes, a real
Dask cluster): metalpy's own allocator tests, ``Scene.build_model`` against a serial build, and a
SimPEG magnetic forward simulation patched with ``Distributed(executor)`` and ``Progressed()``
against plain SimPEG.
"""

from __future__ import annotations

import importlib.util
import io
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("metalpy") is None:
    pytest.skip(
        "metalpy is not installed (pip install '.[metalpy]'; CI runs this in .ci/metalpy)",
        allow_module_level=True,
    )

from mepa.compat import metalpy as compat

compat.install()  # before any other metalpy module imports metalpy.mepa

pytest.importorskip("SimPEG", reason="metalpy's SimPEG layer needs SimPEG (the metalpy extra)")
scab = pytest.importorskip("metalpy.scab", reason="metalpy.scab failed to import")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KINDS = ["linear", "thread", "process", "dask"]


@pytest.fixture(params=KINDS)
def executor(request: pytest.FixtureRequest) -> Iterator[Any]:
    from metalpy.mepa import (  # type: ignore[import-not-found]
        DaskExecutor,
        LinearExecutor,
        ProcessExecutor,
        ThreadExecutor,
    )

    kind = request.param
    if kind == "dask":
        from .dask_cluster import shared_cluster

        made = DaskExecutor(shared_cluster(2).address, shutdown_cluster=False)
    else:
        made = {"linear": LinearExecutor, "thread": ThreadExecutor,
                "process": ProcessExecutor}[kind](2)
    with made:
        yield made


def test_metalpy_mepa_is_the_compat_layer() -> None:
    import metalpy.mepa  # type: ignore[import-not-found]
    from metalpy.scab.distributed import distributed  # type: ignore[import-not-found]

    assert metalpy.mepa.ProcessExecutor is compat.ProcessExecutor
    assert distributed.ProcessExecutor is compat.ProcessExecutor


def test_metalpy_own_allocator_tests() -> None:
    import metalpy  # type: ignore[import-not-found]

    path = Path(metalpy.__file__).parent / "mepa" / "tests" / "test_allocator.py"
    namespace = runpy.run_path(str(path))
    tests = [v for k, v in namespace.items() if k.startswith("test_")]
    assert tests
    for test in tests:
        test()


def _scene() -> Any:
    from metalpy.scab.modelling import Scene  # type: ignore[import-not-found]
    from metalpy.scab.modelling.shapes import Cuboid, Ellipsoid  # type: ignore[import-not-found]

    return Scene.of(Ellipsoid.spheroid(10, 30, 0), Cuboid([20, 20, -40], size=10))


def test_scene_build_model_matches_a_serial_build(executor: Any) -> None:
    scene = _scene()
    mesh = scene.create_mesh(cell_size=4)
    serial = scene.build_model(mesh)
    built = scene.build_model(mesh, executor=executor, progress=True)
    assert serial.n_active_cells > 0
    np.testing.assert_array_equal(built.model, serial.model)
    np.testing.assert_array_equal(built.active_cells, serial.active_cells)


def _forward(model_mesh: Any, patches: list[Any]) -> np.ndarray:
    from metalpy.scab import simpeg_patched  # type: ignore[import-not-found]
    from SimPEG import maps  # type: ignore[import-not-found]
    from SimPEG.potential_fields import magnetics  # type: ignore[import-not-found]

    grid = np.meshgrid(np.linspace(-30, 30, 6), np.linspace(-30, 30, 5), [50])
    points = np.stack(grid, -1).reshape(-1, 3)
    receivers = magnetics.receivers.Point(points, components=["tmi", "bz"])
    source = magnetics.sources.UniformBackgroundField(
        [receivers], amplitude=50000, inclination=78, declination=3
    )
    with simpeg_patched(*patches):
        simulation = magnetics.simulation.Simulation3DIntegral(
            survey=magnetics.survey.Survey(source), mesh=model_mesh.mesh, model_type="scalar",
            chiMap=maps.IdentityMap(nP=model_mesh.n_active_cells),
            ind_active=model_mesh.active_cells, store_sensitivities="forward_only",
        )
    return np.asarray(simulation.dpred(model_mesh.model * 0.1))


def test_simpeg_forward_distributed_and_progressed_matches_plain_simpeg(executor: Any) -> None:
    from metalpy.scab import Distributed, Progressed  # type: ignore[import-not-found]

    scene = _scene()
    model_mesh = scene.build_model(scene.create_mesh(cell_size=4))
    plain = _forward(model_mesh, [])
    patched = _forward(model_mesh, [Distributed(executor), Progressed(file=io.StringIO())])
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(patched, plain, rtol=1e-10, atol=1e-12)
