"""Trust on a shared Dask cluster: the event topic, TLS.

Any client of a scheduler can ``log_event`` to any topic. The host must never unpickle what such
a client sends: only batches signed with the executor's secret (which travels inside the task
payloads) are decoded; everything else is dropped and counted.
"""

from __future__ import annotations

import os
import pickle
import time

import pytest

from mepa import MepaError

distributed = pytest.importorskip("distributed")

from mepa._executors._dask import DaskExecutor  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


class Evil:
    """Unpickling it creates a directory: proof that code ran in the process that loaded it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def fire_n(ctx, n):
    for i in range(n):
        ctx.fire(i)
    return n


def test_events_from_another_client_are_dropped_unread(cluster, tmp_path):
    marker = str(tmp_path / "host-ran-a-stranger's-pickle")
    with DaskExecutor(cluster.address) as ex:
        seen: list[int] = []
        ctx = ex.register(seen.append)
        assert ex.submit_and_gather(fire_n, ctx, 3) == 3
        (topic,) = ex._topics
        evil = Evil(marker)
        forged = [
            pickle.dumps(evil),  # a bare pickle
            pickle.dumps(("source", 1, pickle.dumps([evil]))),  # shaped like a batch
            os.urandom(32) + pickle.dumps(("source", 1, pickle.dumps([evil]))),  # a wrong MAC
            {"not": "bytes"},
            b"short",
        ]
        stranger = distributed.Client(cluster.address, set_as_default=False, timeout=30)
        try:
            for message in forged:
                stranger.log_event(topic, message)
        finally:
            stranger.close()
        deadline = time.monotonic() + 30
        while ex.rejected_events < len(forged) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex.rejected_events == len(forged)
        assert not os.path.exists(marker)
        # the executor's own workers still get through
        assert ex.submit_and_gather(fire_n, ctx, 5) == 5
        assert seen == [0, 1, 2, 0, 1, 2, 3, 4]
        assert ex.rejected_events == len(forged)


def test_tls_address_without_security_says_what_to_pass():
    with pytest.raises(MepaError, match=r"security=") as info:
        DaskExecutor("tls://127.0.0.1:1", timeout=1)
    assert isinstance(info.value, ValueError)
    assert "tls://127.0.0.1:1" in str(info.value)
    assert "Security" in str(info.value)


def test_the_plain_decoder_builds_no_object_that_runs_code(tmp_path):
    import numpy as np

    from mepa._executors._dask import NotPlainData, loads_plain

    marker = str(tmp_path / "decoder-ran-a-pickle")
    for payload in (
        pickle.dumps(Evil(marker)),
        pickle.dumps(("source", 1, [(1, (Evil(marker),), None)])),
        pickle.dumps([os.system]),
    ):
        with pytest.raises(NotPlainData):
            loads_plain(payload)
    assert not os.path.exists(marker)
    value = {"a": [1, 2.5, "s", b"b", (None, True)], "x": np.arange(3.0), "c": complex(1, 2)}
    got = loads_plain(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    assert got["a"] == value["a"]
    assert got["c"] == value["c"]
    np.testing.assert_array_equal(got["x"], value["x"])
