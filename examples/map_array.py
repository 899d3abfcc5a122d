"""map_array: one call to apply a function to the rows of arrays in parallel.

``mepa.map_array(fn, *arrays, executor=..., **broadcast)`` splits the arrays the same way over
the workers, calls ``fn(*chunks, **broadcast)`` on each share and joins the results in the
original order; tuples and dicts of arrays come back as tuples and dicts. ``progress=True``
shows a bar of rows done.

Run: ``python examples/map_array.py``
"""

import numpy as np

from mepa import ThreadExecutor, map_array


def to_polar(x, y, *, degrees):
    radius = np.hypot(x, y)
    angle = np.arctan2(y, x)
    return {"radius": radius, "angle": np.degrees(angle) if degrees else angle}


def main():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50_000), rng.normal(size=50_000)
    with ThreadExecutor(2) as executor:
        polar = map_array(to_polar, x, y, executor=executor, shuffle=True, degrees=True)
        squares = map_array(np.square, x, executor=executor, progress={"desc": "square"})
    print(f"first point: radius {polar['radius'][0]:.3f}, angle {polar['angle'][0]:.1f} deg")
    assert np.allclose(polar["radius"], np.hypot(x, y))
    assert np.allclose(polar["angle"], np.degrees(np.arctan2(y, x)))
    assert np.array_equal(squares, x**2)
    print("map_array: ok")


if __name__ == "__main__":
    main()
