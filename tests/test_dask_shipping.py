"""Shipping the user's code to real Dask workers that cannot see the user's files."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from .scripts import run_python

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]


def test_a_script_run_from_another_directory_ships_its_own_directory(cluster, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "helper_next_to_script.py").write_text("def triple(x):\n    return 3 * x\n")
    script = project / "main.py"
    script.write_text(textwrap.dedent("""
        import sys
        import helper_next_to_script
        from mepa import DaskExecutor

        if __name__ == "__main__":
            with DaskExecutor(sys.argv[1]) as ex:
                print(ex.submit_and_gather(helper_next_to_script.triple, 14))
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_python(script, elsewhere, cluster.address, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "42"


def test_embedded_cluster_in_a_script_without_main_guard_says_why(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        from mepa import DaskExecutor

        with DaskExecutor(n_workers=1) as ex:
            print(ex.submit_and_gather(pow, 2, 3))
    """))
    done = run_python(script, tmp_path, timeout=150)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr
    assert "ClusterSpecError" in done.stderr
    assert len(done.stderr.splitlines()) < 40  # a traceback and a sentence, not pages of logs


def test_a_module_the_host_imports_from_elsewhere_gets_a_hint(cluster, tmp_path, monkeypatch):
    import importlib

    from mepa._executors._dask import DaskExecutor

    outside = tmp_path / "outside_roots"
    outside.mkdir()
    (outside / "not_shipped_mod.py").write_text("def half(x):\n    return x / 2\n")
    monkeypatch.syspath_prepend(str(outside))
    module = importlib.import_module("not_shipped_mod")
    try:
        with DaskExecutor(cluster.address) as ex:
            with pytest.raises(ModuleNotFoundError, match="not_shipped_mod") as info:
                ex.submit_and_gather(module.half, 4)
            notes = "\n".join(getattr(info.value, "__notes__", []))
            assert "extra_paths=[its directory]" in notes
        with DaskExecutor(cluster.address, extra_paths=[outside]) as ex:
            assert ex.submit_and_gather(module.half, 4) == 2.0
    finally:
        sys.modules.pop("not_shipped_mod", None)


# ---------------------------------------------------------------------------- a real package

TASKS_PY = '''\
import importlib
import json
import threading
from importlib import resources
from pathlib import Path

import numpy as np

LOCK = threading.Lock()
TABLE = np.arange(4_000_000, dtype=np.float64)  # 32 MB, built when the module is imported


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a = a
        self.b = b


def import_inside():
    import shipkit.lazy
    import shipkit_sidecar

    deep = importlib.import_module("shipkit.sub.deep")
    return shipkit.lazy.VALUE, deep.VALUE, shipkit_sidecar.VALUE


def read_data():
    via_resources = json.loads(resources.files("shipkit").joinpath("data.json").read_text())
    via_file = json.loads((Path(__file__).parent / "data.json").read_text())
    return via_resources, via_file


def make_slotted(a, b):
    return Slotted(a, b)


def locked_add(a, b):
    with LOCK:
        return a + b


def lookup(i):
    return float(TABLE[i])


def fail_here():
    raise ValueError("failed in shipkit")
'''

FAIL_LINE = 49

EXT_INIT_PY = '''\
from ._bisect import bisect_right  # a copy of the standard library's compiled _bisect


def position(x):
    return bisect_right([1, 5, 9], x)
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """``shipkit`` (imported by the host) and ``shipkit_sidecar`` (never imported by it)."""
    root = tmp_path_factory.mktemp("project")
    package = root / "shipkit"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(TASKS_PY)
    (package / "lazy.py").write_text("VALUE = 'lazy'\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "deep.py").write_text("VALUE = 'deep'\n")
    (package / "data.json").write_text('{"answer": 42}')
    (root / "shipkit_sidecar").mkdir()
    (root / "shipkit_sidecar" / "__init__.py").write_text("VALUE = 'sidecar'\n")
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name.split(".")[0] in ("shipkit", "shipkit_sidecar", "extkit"):
                del sys.modules[name]


@pytest.fixture(scope="module")
def tasks(project):
    import importlib

    return importlib.import_module("shipkit.tasks")


@pytest.fixture(scope="module")
def shipping(cluster, project, tasks):
    from mepa._executors._dask import DaskExecutor

    with DaskExecutor(cluster.address, extra_paths=[project]) as ex:
        yield ex


def test_imports_inside_a_task_reach_modules_the_host_never_imported(shipping, tasks):
    assert "shipkit.lazy" not in sys.modules
    assert "shipkit_sidecar" not in sys.modules
    assert shipping.submit_and_gather(tasks.import_inside) == ("lazy", "deep", "sidecar")


def test_data_files_next_to_modules_are_shipped(shipping, tasks):
    assert shipping.submit_and_gather(tasks.read_data) == ({"answer": 42}, {"answer": 42})


def test_slots_classes_come_back_to_the_host(shipping, tasks):
    out = shipping.submit_and_gather(tasks.make_slotted, 1, "b")
    assert type(out) is tasks.Slotted
    assert (out.a, out.b) == (1, "b")


def test_a_module_level_lock_does_not_stop_the_task(shipping, tasks):
    assert shipping.gather([shipping.submit(tasks.locked_add, i, 1) for i in range(4)]) == [
        1, 2, 3, 4
    ]


def test_module_level_data_travels_once_per_worker_not_with_every_task(shipping, tasks, cluster):
    from mepa import _dask_shipping

    def totals():
        stats = cluster._client.run(_dask_shipping.received)
        return sum(s["tasks"] for s in stats.values()), sum(
            s["payload_bytes"] for s in stats.values()
        )

    tasks_before, bytes_before = totals()
    futures = [shipping.submit(tasks.lookup, i) for i in range(16)]
    assert shipping.gather(futures) == [float(i) for i in range(16)]
    # what each task carried: a reference to shipkit.tasks.lookup, not its 32 MB table
    tasks_after, bytes_after = totals()
    assert tasks_after - tasks_before == 16
    assert (bytes_after - bytes_before) / 16 < 4096
    futures = [shipping.submit(tasks.lookup, i) for i in range(16, 32)]
    assert shipping.gather(futures) == [float(i) for i in range(16, 32)]
    # what the workers received: each got the code once, whatever its number of tasks
    stats = cluster._client.run(_dask_shipping.received)
    assert len(stats) == 2
    code = shipping._modules.bundle()
    assert code is not None
    assert code.nbytes < 4_000_000  # the sources, not the table they build
    for address, seen in stats.items():
        assert seen["bundles"].get(code.digest, 0) <= 1, (address, seen)
    assert sum(seen["bundles"].get(code.digest, 0) for seen in stats.values()) >= 1


def test_remote_tracebacks_name_the_shipped_file_and_line(shipping, tasks):
    with pytest.raises(ValueError, match="failed in shipkit") as info:
        shipping.submit_and_gather(tasks.fail_here)
    remote = str(info.value.__cause__)
    assert f'shipkit/tasks.py", line {FAIL_LINE}, in fail_here' in remote, remote
    assert 'raise ValueError("failed in shipkit")' in remote
    assert "<dynamic-code>" not in remote


def test_a_package_with_a_compiled_extension_must_be_installed_on_the_workers(
    shipping, project
):
    import _bisect
    import importlib
    import shutil

    package = project / "extkit"
    package.mkdir()
    (package / "__init__.py").write_text(EXT_INIT_PY)
    shutil.copy(_bisect.__file__, package / Path(_bisect.__file__).name)
    extkit = importlib.import_module("extkit")
    assert extkit.position(6) == 2
    with pytest.raises(ModuleNotFoundError, match="extkit") as info:
        shipping.submit_and_gather(extkit.position, 6)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "compiled extension" in notes
    assert "install the package on every Dask worker" in notes


def test_the_bundle_holds_packages_whole_and_leaves_out_what_must_not_travel(
    tmp_path, monkeypatch
):
    from mepa._dask_shipping import LocalModules

    (tmp_path / "app.py").write_text("X = 1\n")
    (tmp_path / "json.py").write_text("SHADOW = True\n")  # a standard library name
    package = tmp_path / "pkg"
    for sub in ("__pycache__", ".hidden", "sub"):
        (package / sub).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "table.csv").write_text("a,b\n1,2\n")
    (package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (package / ".hidden" / "notes.txt").write_text("private")
    for name in ("compiled", "skipped"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "compiled" / "_ext.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (tmp_path / "data").mkdir()  # not a package: never walked
    (tmp_path / "data" / "big.bin").write_bytes(b"\0" * 1000)
    monkeypatch.chdir(tmp_path)

    bundle = LocalModules(excludes=["skipped"]).bundle()
    assert bundle is not None
    assert [path for path, _ in bundle.files] == [
        "app.py", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/table.csv"
    ]
    assert dict(bundle.files)["pkg/table.csv"] == b"a,b\n1,2\n"
    # the same files are the same version; an edit makes a new one
    assert LocalModules(excludes=["skipped"]).bundle().digest == bundle.digest
    (tmp_path / "app.py").write_text("X = 2\n")
    assert LocalModules(excludes=["skipped"]).bundle().digest != bundle.digest
