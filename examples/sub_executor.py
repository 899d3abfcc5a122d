"""Sub-executors: run part of the work on some of the workers.

``executor.extract_by_name(pattern)`` gives a sub-executor over the workers whose name matches
(a substring, a compiled regular expression, or a predicate). It runs on the parent's engine;
shutting it down leaves the parent running.

Run: ``python examples/sub_executor.py``
"""

import re

import numpy as np

from mepa import ThreadExecutor


def total(chunk):
    return np.array([chunk.sum()])


def main():
    with ThreadExecutor(4) as executor:
        print("all workers:", [w.name for w in executor.workers])
        evens = executor.extract_by_name(re.compile(r"-[02]$"))
        last = executor.extract_by_name(lambda w: w.index == 3)
        print("sub-executor:", [w.name for w in evens.workers])
        assert [w.name for w in evens.workers] == ["thread-0", "thread-2"]

        data = np.arange(100)
        alloc = evens.arrange(data)  # two chunks: one per selected worker
        partial = evens.gather(evens.distribute(total, alloc))
        print("chunk sums on thread-0 and thread-2:", [int(p[0]) for p in partial])
        assert sum(int(p[0]) for p in partial) == data.sum()

        assert last.submit_and_gather(pow, 2, 8) == 256
        evens.shutdown()
        # The parent keeps running.
        assert executor.submit_and_gather(max, 1, 2) == 2
    print("sub executor: ok")


if __name__ == "__main__":
    main()
