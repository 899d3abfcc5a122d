"""Every bad input of the public API, with the error it raises and what its message says.

Each row: what is called (with ``ex``, a LinearExecutor, and ``x``, ten floats), the mepa error
expected, the built-in exception it must also be, and a fragment of the message. A message
names the parameter, the constraint and the value received, and says how to fix it.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import mepa
from mepa import (
    AllocationError,
    AllocationPlan,
    ArgumentTypeError,
    ChunkIndexError,
    ClusterSpecError,
    InvalidArgumentError,
    MepaError,
    WorkerSpecError,
)

pytestmark = pytest.mark.timeout(60)

x = np.arange(10.0)


def noop(*args: Any, **kwargs: Any) -> int:
    return 0


def plan_json(**fields: Any) -> str:
    import json

    plan: dict[str, Any] = {"n": 10, "weights": [1], "sizes": [10], "block_rows": 1}
    plan.update(fields)
    return json.dumps(plan)


def done_future() -> concurrent.futures.Future[int]:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    future.set_result(1)
    return future


Case = tuple[str, Callable[[Any], Any], type[MepaError], type[Exception], str]

CASES: list[Case] = [
    # -- arrange and its parsers
    ("weights 2**70", lambda ex: mepa.arrange(x, 2**70), AllocationError, ValueError,
     "number of workers must be <= 16777216, got 1180591620717411303424"),
    ("weights 0", lambda ex: mepa.arrange(x, 0), AllocationError, ValueError,
     "positive number of workers, got 0"),
    ("weights None", lambda ex: mepa.arrange(x, None), AllocationError, ValueError,
     "weights must be an int or a sequence of weights, got NoneType"),
    ("weights NaN", lambda ex: mepa.arrange(x, [math.nan, 1]), AllocationError, ValueError,
     "weights must be finite and >= 0, got [nan, 1.0]"),
    ("weights strings", lambda ex: mepa.arrange(x, ["1", "2"]), AllocationError, ValueError,
     "1-d sequence of real numbers, got dtype <U1"),
    ("weights 2-d", lambda ex: mepa.arrange(x, [[1, 2]]), AllocationError, ValueError,
     "got a 2-d array"),
    ("weights all zero", lambda ex: mepa.arrange(x, [0, 0]), AllocationError, ValueError,
     "weights must not all be zero"),
    ("parse_weights 2**70", lambda ex: mepa.parse_weights(2**70), AllocationError, ValueError,
     "<= 16777216"),
    ("shuffle generator", lambda ex: mepa.arrange(x, 2, shuffle=(i for i in range(10))),
     AllocationError, ValueError, "got generator: <generator object"),
    ("shuffle object()", lambda ex: mepa.arrange(x, 2, shuffle=object()),
     AllocationError, ValueError, "an int seed >= 0, a numpy.random.Generator or RandomState"),
    ("shuffle SeedSequence", lambda ex: mepa.arrange(x, 2, shuffle=np.random.SeedSequence(1)),
     AllocationError, ValueError, "pass np.random.default_rng(seed_sequence)"),
    ("shuffle BitGenerator", lambda ex: mepa.arrange(x, 2, shuffle=np.random.PCG64(1)),
     AllocationError, ValueError, "pass np.random.Generator(bit_generator)"),
    ("shuffle dict", lambda ex: mepa.arrange(x, 2, shuffle={}), AllocationError, ValueError,
     "got dict: {}"),
    ("shuffle float", lambda ex: mepa.arrange(x, 2, shuffle=1.5), AllocationError, ValueError,
     "got float: 1.5"),
    ("shuffle negative seed", lambda ex: mepa.arrange(x, 2, shuffle=-1), AllocationError,
     ValueError, "shuffle seed must be >= 0, got -1"),
    ("shuffle not a permutation", lambda ex: mepa.arrange(x, 2, shuffle=[0] * 10),
     AllocationError, ValueError, "got duplicates"),
    ("shuffle floats", lambda ex: mepa.arrange(x, 2, shuffle=np.arange(10.0)),
     AllocationError, ValueError, "dtype float64 (not integers)"),
    ("block_rows 0", lambda ex: mepa.arrange(x, 2, shuffle=True, block_rows=0),
     AllocationError, ValueError, "block_rows must be a positive int or None, got 0"),
    ("block_rows float", lambda ex: mepa.arrange(x, 2, shuffle=True, block_rows=2.0),
     AllocationError, ValueError, "got 2.0"),
    ("data 0-d", lambda ex: mepa.arrange(3, 2), AllocationError, ValueError,
     "at least one dimension to split along, got a 0-d array"),
    ("data ragged", lambda ex: mepa.arrange([[1], [1, 2]], 2), AllocationError, ValueError,
     "data must be array-like"),
    ("arrange_many lengths", lambda ex: mepa.arrange_many(x, x[:3], weights=2),
     AllocationError, ValueError, "same number of rows, got lengths [10, 3]"),
    ("arrange_many nothing", lambda ex: mepa.arrange_many(weights=2), AllocationError,
     ValueError, "at least one array, got none"),
    # -- Allocation
    ("chunk index float", lambda ex: mepa.arrange(x, 2)[1.5], ArgumentTypeError, TypeError,
     "chunk index must be an int, got float: 1.5"),
    ("chunk index out of range", lambda ex: mepa.arrange(x, 2)[5], ChunkIndexError, IndexError,
     "chunk index must be in range(2) (or negative from the end), got 5"),
    ("reassemble an int", lambda ex: mepa.arrange(x, 2).reassemble(5), ArgumentTypeError,
     TypeError, "results must be a list of one result per chunk, got int"),
    ("reassemble wrong count", lambda ex: mepa.arrange(x, 2).reassemble([x]), AllocationError,
     ValueError, "one entry per chunk (2), got 1"),
    ("reverse_shuffle 'no'",
     lambda ex: mepa.arrange(x, 2).reassemble(list(mepa.arrange(x, 2)), reverse_shuffle="no"),
     ArgumentTypeError, TypeError, "reverse_shuffle must be True or False, got str: 'no'"),
    ("reverse_shuffle None",
     lambda ex: mepa.arrange(x, 2).reassemble(list(mepa.arrange(x, 2)), reverse_shuffle=None),
     ArgumentTypeError, TypeError, "got NoneType: None"),
    ("Allocation many='yes'",
     lambda ex: mepa.Allocation([x], weights=[1], sizes=[10], block_rows=1, order=None,
                                many="yes"),
     ArgumentTypeError, TypeError, "many must be True or False, got str: 'yes'"),
    ("Allocation sizes", lambda ex: mepa.Allocation([x], weights=[1], sizes=[9], block_rows=1,
                                                    order=None),
     AllocationError, ValueError, "largest-remainder split of 10 rows"),
    ("Allocation order", lambda ex: mepa.Allocation([x], weights=[1], sizes=[10], block_rows=1,
                                                    order=[1, 2]),
     AllocationError, ValueError, "order must list the 10 blocks"),
    ("from_plan a dict", lambda ex: mepa.Allocation.from_plan({"n": 10}, x), ArgumentTypeError,
     TypeError, "plan must be an AllocationPlan, got dict"),
    ("from_plan other data", lambda ex: mepa.Allocation.from_plan(mepa.arrange(x, 2).plan, x[:3]),
     AllocationError, ValueError, "the plan's 10 rows, got 3"),
    ("ChunkSelection n string", lambda ex: mepa.ChunkSelection("a", 1, None, 0, 1),
     ArgumentTypeError, TypeError, "n must be an int, got str: 'a'"),
    ("ChunkSelection size -1", lambda ex: mepa.ChunkSelection(10, 1, None, 0, -1),
     AllocationError, ValueError, "size must be >= 0, got -1"),
    ("ChunkSelection block_rows 0", lambda ex: mepa.ChunkSelection(10, 0, np.arange(3), 0, 2),
     AllocationError, ValueError, "block_rows must be >= 1, got 0"),
    ("selection take other data", lambda ex: mepa.arrange(x, 2).selection(0).take(x[:3]),
     AllocationError, ValueError, "source must have the 10 rows of the arranged data, got 3"),
    ("selection put wrong rows",
     lambda ex: mepa.arrange(x, 2).selection(0).put(np.empty(10), np.ones(3)),
     AllocationError, ValueError, "values must have the 5 rows of the chunk, got 3 rows"),
    # -- AllocationPlan, hand-edited
    ("plan weight string", lambda ex: AllocationPlan.model_validate_json(plan_json(weights=["1"])),
     AllocationError, ValueError, "weights.0 must be a number, got str '1'"),
    ("plan weight bool", lambda ex: AllocationPlan.model_validate_json(plan_json(weights=[True])),
     AllocationError, ValueError, "weights.0 must be a number, got bool True"),
    ("plan n 2**64", lambda ex: AllocationPlan.model_validate_json(plan_json(n=2**64)),
     AllocationError, ValueError, "n: input should be less than or equal to 9223372036854775807"),
    ("plan order 2**64",
     lambda ex: AllocationPlan.model_validate_json(plan_json(order=[2**64, *range(1, 10)])),
     AllocationError, ValueError, "order.0: input should be less than or equal to"),
    ("plan n -1", lambda ex: AllocationPlan.model_validate_json(plan_json(n=-1)),
     AllocationError, ValueError, "n: input should be greater than or equal to 0, got -1"),
    ("plan n string", lambda ex: AllocationPlan(n="10", weights=[1], sizes=[10], block_rows=1),
     AllocationError, ValueError, "n must be a number, got str '10'"),
    ("plan missing fields", lambda ex: AllocationPlan.model_validate({"n": 10}),
     AllocationError, ValueError, "weights: field required"),
    ("plan extra field", lambda ex: AllocationPlan.model_validate_json(plan_json(x=1)),
     AllocationError, ValueError, "x: extra inputs are not permitted"),
    ("plan not JSON", lambda ex: AllocationPlan.model_validate_json("nope"), AllocationError,
     ValueError, "plan: invalid json"),
    ("plan inconsistent sizes", lambda ex: AllocationPlan.model_validate_json(plan_json(sizes=[9])),
     AllocationError, ValueError, "largest-remainder split of 10 rows"),
    ("plan infinite weight",
     lambda ex: AllocationPlan(n=10, weights=[math.inf], sizes=[10], block_rows=1),
     AllocationError, ValueError, "weights must be finite and >= 0, got [inf]"),
    # -- executors' constructors
    ("LinearExecutor(0)", lambda ex: mepa.LinearExecutor(0), WorkerSpecError, ValueError,
     "n_workers must be a positive int or None, got 0"),
    ("ThreadExecutor('2')", lambda ex: mepa.ThreadExecutor("2"), WorkerSpecError, ValueError,
     "got '2'"),
    ("ProcessExecutor threshold -1",
     lambda ex: mepa.ProcessExecutor(1, shared_memory_threshold=-1), InvalidArgumentError,
     ValueError, "shared_memory_threshold must be a number of bytes >= 0 or None, got -1"),
    ("ProcessExecutor threshold '1'",
     lambda ex: mepa.ProcessExecutor(1, shared_memory_threshold="1"), ArgumentTypeError,
     TypeError, "got str: '1'"),
    ("ProcessExecutor keep_worker_heap 'yes'",
     lambda ex: mepa.ProcessExecutor(1, keep_worker_heap="yes"), ArgumentTypeError, TypeError,
     "keep_worker_heap must be True or False, got str: 'yes'"),
    ("Worker weight string", lambda ex: mepa.Worker("a", "1"), WorkerSpecError, ValueError,
     "worker weight must be a real number, got str: '1'"),
    ("Worker name int", lambda ex: mepa.Worker(3), WorkerSpecError, ValueError,
     "worker name must be a non-empty string, got 3"),
    # -- submit, gather, map
    ("submit a non-callable", lambda ex: ex.submit(3), ArgumentTypeError, TypeError,
     "fn must be callable, got int: 3"),
    ("gather a set", lambda ex: ex.gather({done_future()}), ArgumentTypeError, TypeError,
     "got a set of 1 futures"),
    ("gather a generator", lambda ex: ex.gather(f for f in [done_future()]), ArgumentTypeError,
     TypeError, "got a generator"),
    ("gather timeout NaN", lambda ex: ex.gather(done_future(), timeout=math.nan),
     InvalidArgumentError, ValueError, "timeout must be a number of seconds or None, got nan"),
    ("gather timeout string", lambda ex: ex.gather(done_future(), timeout="1"),
     ArgumentTypeError, TypeError, "got str: '1'"),
    ("gather progress string", lambda ex: ex.gather(done_future(), progress="yes"),
     ArgumentTypeError, TypeError, "progress must be a bool or a dict of tqdm options"),
    ("map chunksize 0", lambda ex: ex.map(noop, [1], chunksize=0), InvalidArgumentError,
     ValueError, "chunksize must be a positive int or None, got 0"),
    ("map chunksize 1.5", lambda ex: ex.map(noop, [1], chunksize=1.5), InvalidArgumentError,
     ValueError, "got 1.5"),
    ("submit_to unknown worker", lambda ex: ex.submit_to("nope", noop), WorkerSpecError,
     ValueError, "worker must be one of this executor's workers"),
    ("extract_by_name an int", lambda ex: ex.extract_by_name(3), ArgumentTypeError, TypeError,
     "pattern must be a str, a compiled re.Pattern or a callable"),
    ("extract_by_name no match", lambda ex: ex.extract_by_name("zzz"), WorkerSpecError,
     ValueError, "matches none of the workers"),
    ("distribute a foreign allocation", lambda ex: ex.distribute(noop, mepa.arrange(x, 3)),
     AllocationError, ValueError, "this executor has 2 workers, got an allocation of 3 chunks"),
    # -- create_shared_array
    ("create_shared_array(-1)", lambda ex: ex.create_shared_array(-1), InvalidArgumentError,
     ValueError, "shape must hold sizes >= 0, got -1"),
    ("create_shared_array('a')", lambda ex: ex.create_shared_array("a"), ArgumentTypeError,
     TypeError, "shape must be an int or a tuple of ints, got str: 'a'"),
    ("create_shared_array float dim", lambda ex: ex.create_shared_array((2, 1.5)),
     ArgumentTypeError, TypeError, "holding float"),
    ("create_shared_array(2**70)", lambda ex: ex.create_shared_array(2**70),
     InvalidArgumentError, ValueError, "shape must hold at most 2**63 - 1 elements, got"),
    ("create_shared_array bad dtype", lambda ex: ex.create_shared_array(3, dtype="nope"),
     ArgumentTypeError, TypeError, "dtype must be a NumPy dtype"),
    # -- progress, events
    ("progress total 'x'", lambda ex: ex.progress(total="x"), ArgumentTypeError, TypeError,
     "total must be an int number of items >= 0, got str: 'x'"),
    ("progress total -1", lambda ex: ex.progress(total=-1), InvalidArgumentError, ValueError,
     "total must be a number of items >= 0, got -1"),
    ("progress total NaN", lambda ex: ex.progress(total=math.nan), ArgumentTypeError, TypeError,
     "got float: nan"),
    ("progress unknown option", lambda ex: ex.progress(colour_scheme=1), ArgumentTypeError,
     TypeError, "progress options must be tqdm's, got ['colour_scheme']"),
    ("progress update a string", lambda ex: ex.progress(disable=True).update("x"),
     ArgumentTypeError, TypeError, "n must be a number of items, got str: 'x'"),
    ("progress register -1", lambda ex: ex.progress(disable=True).register(-1),
     InvalidArgumentError, ValueError, "n must be a number of items >= 0, got -1"),
    ("register a non-callable", lambda ex: ex.register(3), ArgumentTypeError, TypeError,
     "callback must be callable, got int: 3"),
    ("on a non-callable", lambda ex: ex.on("e", 3), ArgumentTypeError, TypeError,
     "callback must be callable"),
    ("on an unhashable event", lambda ex: ex.on([], noop), ArgumentTypeError, TypeError,
     "event must be hashable, got list: []"),
    # -- map_array
    ("map_array a non-callable", lambda ex: mepa.map_array(3, x, executor=ex),
     ArgumentTypeError, TypeError, "fn must be callable, got int: 3"),
    ("map_array no arrays", lambda ex: mepa.map_array(noop, executor=ex), AllocationError,
     ValueError, "at least one array after fn, got none"),
    ("map_array executor string", lambda ex: mepa.map_array(noop, x, executor="thread"),
     ArgumentTypeError, TypeError, "executor must be a mepa Executor or None, got str"),
    ("map_array progress string", lambda ex: mepa.map_array(noop, x, executor=ex, progress="y"),
     ArgumentTypeError, TypeError, "progress must be a bool or a dict of tqdm options"),
    ("map_array shuffle object()", lambda ex: mepa.map_array(noop, x, executor=ex,
                                                             shuffle=object()),
     AllocationError, ValueError, "got object: <object object"),
    ("map_array 0-d array", lambda ex: mepa.map_array(noop, 3.0, executor=ex), AllocationError,
     ValueError, "arrays[0] must be an array with at least one dimension"),
    # -- DaskExecutor's constructor: refused before anything connects or starts
    ("DaskExecutor address int", lambda ex: mepa.DaskExecutor(42), ArgumentTypeError,
     TypeError, "or None, got int: 42"),
    ("DaskExecutor address empty", lambda ex: mepa.DaskExecutor(""), ClusterSpecError,
     ValueError, "address must be 'tcp://host:port' or 'tls://host:port', got ''"),
    ("DaskExecutor address with n_workers",
     lambda ex: mepa.DaskExecutor("tcp://127.0.0.1:1", n_workers=2), ArgumentTypeError,
     TypeError, "only size the embedded cluster (address=None), got address="),
    ("DaskExecutor n_workers 0", lambda ex: mepa.DaskExecutor(n_workers=0), WorkerSpecError,
     ValueError, "n_workers must be a positive int or None, got 0"),
    ("DaskExecutor threads_per_worker 1.5",
     lambda ex: mepa.DaskExecutor(threads_per_worker=1.5), WorkerSpecError, ValueError,
     "threads_per_worker must be a positive int or None, got 1.5"),
    ("DaskExecutor security string", lambda ex: mepa.DaskExecutor(security="tls"),
     ArgumentTypeError, TypeError, "security must be a distributed.security.Security or None"),
    ("DaskExecutor upload_modules 'no'", lambda ex: mepa.DaskExecutor(upload_modules="no"),
     ArgumentTypeError, TypeError, "upload_modules must be True or False, got str: 'no'"),
    ("DaskExecutor strict_pinning 1", lambda ex: mepa.DaskExecutor(strict_pinning=1),
     ArgumentTypeError, TypeError, "strict_pinning must be True or False, got int: 1"),
    ("DaskExecutor split_threads None", lambda ex: mepa.DaskExecutor(split_threads=None),
     ArgumentTypeError, TypeError, "split_threads must be True or False, got NoneType"),
    ("DaskExecutor extra_paths a string", lambda ex: mepa.DaskExecutor(extra_paths="src"),
     ArgumentTypeError, TypeError, "extra_paths must be a list of directories, got str"),
    ("DaskExecutor excludes of ints", lambda ex: mepa.DaskExecutor(excludes=[1]),
     ArgumentTypeError, TypeError, "excludes must be a list of module names, got list: [1]"),
    ("DaskExecutor timeout 0", lambda ex: mepa.DaskExecutor(timeout=0), InvalidArgumentError,
     ValueError, "timeout must be a number of seconds > 0, got 0"),
    ("DaskExecutor timeout string", lambda ex: mepa.DaskExecutor(timeout="1"),
     ArgumentTypeError, TypeError, "timeout must be a number of seconds > 0, got str: '1'"),
    ("DaskExecutor no_worker_timeout NaN",
     lambda ex: mepa.DaskExecutor(no_worker_timeout=math.nan), InvalidArgumentError,
     ValueError, "no_worker_timeout must be a number of seconds > 0, got nan"),
    ("DaskExecutor wait_for_workers -1", lambda ex: mepa.DaskExecutor(wait_for_workers=-1),
     WorkerSpecError, ValueError, "wait_for_workers must be an int >= 0, got -1"),
    ("DaskExecutor initializer 3", lambda ex: mepa.DaskExecutor(initializer=3),
     ArgumentTypeError, TypeError, "initializer must be a callable or None, got int: 3"),
    ("DaskExecutor initargs list",
     lambda ex: mepa.DaskExecutor(initializer=noop, initargs=[1]), ArgumentTypeError,
     TypeError, "initargs must be a tuple, got list: [1]"),
]


@pytest.fixture(scope="module")
def ex() -> Iterator[mepa.LinearExecutor]:
    with mepa.LinearExecutor(2) as executor:
        yield executor


@pytest.mark.parametrize(
    ("call", "error", "builtin", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_raises_a_typed_error_that_says_what_to_do(
    ex: mepa.LinearExecutor,
    call: Callable[[Any], Any],
    error: type[MepaError],
    builtin: type[Exception],
    fragment: str,
) -> None:
    with pytest.raises(error) as info:
        call(ex)
    assert isinstance(info.value, MepaError)
    assert isinstance(info.value, builtin)
    message = str(info.value)
    assert fragment in message, message
    assert ";" in message or "pass" in message, f"no fix given: {message}"


def test_create_shared_array_checks_its_input_on_processes() -> None:
    with mepa.ProcessExecutor(1) as executor:
        with pytest.raises(InvalidArgumentError, match=r"sizes >= 0, got -1"):
            executor.create_shared_array(-1)
        with pytest.raises(ArgumentTypeError, match="dtype must be a NumPy dtype"):
            executor.create_shared_array(3, dtype="nope")


def test_every_public_error_is_exported_and_documented() -> None:
    import os

    docs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "api", "errors.md")
    with open(docs) as f:
        text = f.read()
    for name in ("InvalidArgumentError", "ArgumentTypeError", "ChunkIndexError"):
        assert issubclass(getattr(mepa, name), MepaError)
        assert f"::: mepa.{name}" in text
