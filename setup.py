"""Build of the optional C accelerators; everything else is in pyproject.toml.

``mepa._tally`` makes ``progress.update()`` in tasks about as cheap as a list append;
``mepa._inplace`` lets a process worker's result array be allocated in the shared output
buffer, so that it is not copied there. Both are optional: without a C compiler (or NumPy's
headers) the build goes on and mepa uses its pure-Python tally and copies results.
"""

from setuptools import Extension, setup


def _extensions() -> list[Extension]:
    extensions = [Extension("mepa._tally", ["mepa/_tally.c"], optional=True)]
    try:
        import numpy
    except ImportError:
        return extensions
    extensions.append(
        Extension(
            "mepa._inplace",
            ["mepa/_inplace.c"],
            include_dirs=[numpy.get_include()],
            optional=True,
        )
    )
    return extensions


setup(ext_modules=_extensions())
