"""Workers: names, groups, weights and the errors for bad ones."""

from __future__ import annotations

import math
import pickle

import pytest

import mepa
from mepa import Worker, WorkerSpecError


def test_group_and_index_from_the_name():
    assert (Worker("gpu-node-3").group, Worker("gpu-node-3").index) == ("gpu-node", 3)
    assert (Worker("solo").group, Worker("solo").index) == ("solo", 0)
    assert (Worker("a-b").group, Worker("a-b").index) == ("a-b", 0)


def test_original_getters():
    w = Worker("process-1", weight=2)
    assert (w.get_name(), w.get_weight(), w.get_group(), w.get_in_group_id()) == (
        "process-1", 2.0, "process", 1
    )


def test_value_semantics():
    w = Worker("node-0", 1.5)
    assert w == Worker("node-0", weight=1.5)
    assert hash(w) == hash(Worker("node-0", 1.5))
    assert pickle.loads(pickle.dumps(w)) == w
    with pytest.raises(AttributeError):
        w.weight = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "weight", "fragment"),
    [
        ("", 1.0, "worker name must be a non-empty string, got ''"),
        (3, 1.0, "worker name must be a non-empty string, got 3"),
        ("w-0", -1.0, "worker weight must be finite and >= 0, got -1.0"),
        ("w-0", math.nan, "worker weight must be finite and >= 0, got nan"),
        ("w-0", math.inf, "worker weight must be finite and >= 0, got inf"),
        ("w-0", "2", "worker weight must be a real number, got str"),
        ("w-0", True, "worker weight must be a real number, got bool"),
    ],
)
def test_bad_workers(name, weight, fragment):
    with pytest.raises(WorkerSpecError, match=fragment.replace("(", r"\(")):
        Worker(name, weight)


def test_weights_decide_the_split():
    alloc = mepa.arrange(list(range(30)), weights=[Worker("big-0", 2), Worker("small-0", 1)])
    assert alloc.sizes == (20, 10)
