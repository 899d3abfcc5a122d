"""Shared output: tasks write their results in place into one array.

``executor.create_shared_array(shape, dtype)`` returns an array the tasks can write into
directly: a plain array on thread executors, shared memory on the process executor (passed to
workers without a copy). Each task fills its own rows; nothing is sent back.

Run: ``python examples/shared_output.py``
"""

import itertools

import numpy as np

from mepa import ProcessExecutor


def fill(out, start, stop):
    """Runs in a worker process: write rows start..stop of the shared array."""
    rows = np.arange(start, stop)
    out[start:stop, 0] = rows
    out[start:stop, 1] = np.sqrt(rows)
    return stop - start


def main():
    n, n_tasks = 10_000, 8
    with ProcessExecutor(2) as executor:
        out = executor.create_shared_array((n, 2), np.float64)
        bounds = np.linspace(0, n, n_tasks + 1).astype(int).tolist()
        futures = [executor.submit(fill, out, a, b) for a, b in itertools.pairwise(bounds)]
        written = executor.gather(futures)
        print(f"{n_tasks} tasks wrote {sum(written)} rows in place; last row: {out[-1]}")
        assert sum(written) == n
        assert np.array_equal(out[:, 0], np.arange(n))
        assert np.allclose(out[:, 1], np.sqrt(np.arange(n)))
        del out  # release the shared memory before the executor shuts down
    print("shared output: ok")


if __name__ == "__main__":
    main()
