"""Structured gather: results come back in the shape the futures were given in.

``gather`` accepts one future or any nesting of lists, tuples and dicts of futures, and returns
the results in the same structure. A task may itself return a tuple or dict of arrays: after
``distribute``, ``Allocation.reassemble`` puts each array back in the original row order.

Run: ``python examples/structured_gather.py``
"""

import numpy as np

from mepa import ThreadExecutor


def stats(x):
    """Per-row results as a dict of arrays (one row per input row)."""
    return {"square": x**2, "sign": np.sign(x), "pair": (x - 1, x + 1)}


def main():
    with ThreadExecutor(2) as executor:
        # Nested containers of futures: the result has the same shape.
        futures = {
            "sum": executor.submit(sum, [1, 2, 3]),
            "powers": [executor.submit(pow, 2, k) for k in range(4)],
            "pair": (executor.submit(max, 3, 7), executor.submit(min, 3, 7)),
        }
        result = executor.gather(futures)
        print("gathered:", result)
        assert result == {"sum": 6, "powers": [1, 2, 4, 8], "pair": (7, 3)}

        # Tasks returning a dict of arrays, reassembled array by array, shuffle undone.
        data = np.arange(-5, 7)
        alloc = executor.arrange(data, shuffle=True)
        out = alloc.reassemble(executor.gather(executor.distribute(stats, alloc)))
        print("square:", out["square"])
        print("pair[1]:", out["pair"][1])
        assert np.array_equal(out["square"], data**2)
        assert np.array_equal(out["sign"], np.sign(data))
        assert np.array_equal(out["pair"][0], data - 1)
        assert np.array_equal(out["pair"][1], data + 1)
    print("structured gather: ok")


if __name__ == "__main__":
    main()
