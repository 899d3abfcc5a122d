"""Weighted workers: give faster workers a bigger share of the rows.

``mepa.arrange(data, weights)`` splits rows in proportion to the weights (largest-remainder
rounding, so the sizes always add up). Weights may be numbers or ``mepa.Worker`` objects, whose
names say where each share goes. Each chunk is then submitted to the executor and the results
are put back in the original order.

Run: ``python examples/weighted_workers.py``
"""

import numpy as np

import mepa
from mepa import ThreadExecutor, Worker


def norm_rows(block):
    return np.linalg.norm(block, axis=1)


def main():
    workers = [Worker("gpu-0", weight=3.0), Worker("cpu-0", weight=1.0), Worker("cpu-1", 1.0)]
    data = np.random.default_rng(0).normal(size=(1000, 3))

    alloc = mepa.arrange(data, workers, shuffle=True)
    for worker, size in zip(workers, alloc.sizes, strict=True):
        print(f"{worker.name} (weight {worker.weight:g}, group {worker.group!r}): {size} rows")
    assert alloc.sizes == (600, 200, 200)

    with ThreadExecutor(len(workers)) as executor:
        futures = [executor.submit(norm_rows, chunk) for chunk in alloc]
        result = alloc.reassemble(executor.gather(futures))
    assert np.allclose(result, np.linalg.norm(data, axis=1))

    # Plain numbers work too; a weight of 0 gets no rows.
    print("weights [2, 1, 0] ->", mepa.arrange(np.arange(9), [2, 1, 0]).sizes)
    assert mepa.arrange(np.arange(9), [2, 1, 0]).sizes == (6, 3, 0)
    print("weighted workers: ok")


if __name__ == "__main__":
    main()
