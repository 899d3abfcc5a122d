"""Benchmarks of mepa against serial NumPy, loky, joblib, Dask and mpire.

Run ``python -m benchmarks --help``; see ``benchmarks/README.md`` for what each scenario times.

Layout::

    run.py          command line, output folder
    _harness.py     setup / warm-up / timing in pairs with the baseline / teardown
    _stats.py       pure statistics, ratios and target checks
    _report.py      Markdown, JSON and PNG output
    _machine.py     machine and library versions
    scenarios/      one module per scenario; _kernels.py holds the functions workers run
"""
