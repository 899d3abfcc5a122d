"""Compatibility layers: code written for other parallel APIs, running on mepa.

- :mod:`mepa.compat.metalpy`: the API of ``metalpy.mepa`` (metalpy 0.2), with the original's
  call forms and meanings; ``mepa.compat.metalpy.install()`` makes ``import metalpy.mepa``
  resolve to it.
"""

from __future__ import annotations

__all__: list[str] = []
