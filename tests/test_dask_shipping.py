"""Shipping the user's code to real Dask workers that cannot see the user's files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]


def run_script(path, cwd, *args, timeout=150):
    return subprocess.run(
        [sys.executable, str(path), *args], cwd=cwd, capture_output=True, text=True, check=False,
        timeout=timeout,
    )


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
    done = run_script(script, elsewhere, cluster.address)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "42"


def test_embedded_cluster_in_a_script_without_main_guard_says_why(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        from mepa import DaskExecutor

        with DaskExecutor(n_workers=1) as ex:
            print(ex.submit_and_gather(pow, 2, 3))
    """))
    done = run_script(script, tmp_path)
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
