"""Executor backends. Import them from :mod:`mepa`."""
