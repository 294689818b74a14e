"""gridsim: a privacy-preserving smart-grid edge simulator.

Smart-meter agents and an aggregator talk MQTT; together they train a load
forecaster with federated learning. See README.md and DESIGN.md.
"""

from __future__ import annotations

__version__ = "0.1.0"
