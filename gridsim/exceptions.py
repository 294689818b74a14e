"""The exceptions gridsim raises. Every one derives from :class:`GridsimError`."""

from __future__ import annotations


class GridsimError(Exception):
    """Base class of every error gridsim raises on purpose."""


class InvalidInputError(GridsimError, ValueError):
    """An argument is outside what the function accepts (also raised by ``gridsim._core``)."""


class ConfigError(GridsimError):
    """A command-line option or configuration value is invalid."""


class BrokerError(GridsimError):
    """The MQTT broker could not be started, reached or used."""


class MessageError(GridsimError):
    """A wire message is malformed, oversized, of an unknown version or type, or forged."""


class RoundError(GridsimError):
    """A federated round could not be completed."""


class IntegrityError(GridsimError):
    """A proof, signature, hash or secret share failed to verify (also from ``gridsim._core``)."""


class ProtocolError(GridsimError):
    """A peer broke a protocol rule (also from ``gridsim._core``)."""
