"""pimon: know within seconds which machines of a cluster are up, struggling or gone."""

from __future__ import annotations

__version__ = "0.1.0"
