"""Build of the optional C accelerator; everything else is in pyproject.toml.

``mepa._tally`` makes ``progress.update()`` in tasks about as cheap as a list append. It is
optional: without a C compiler the build goes on and mepa uses its pure-Python tally.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mepa._tally", ["mepa/_tally.c"], optional=True)])
