"""The one error hierarchy of fedbus.

Callers catch these instead of paho's, msgpack's or numpy's own exceptions:
the boundary modules translate foreign errors into one of these so that a
daemon can tell "bad input from the network" (reject, count, go on) from
"our own bug" (crash loudly).
"""

from __future__ import annotations


class FedbusError(Exception):
    """Base of every error fedbus raises on purpose."""


class CodecError(FedbusError):
    """A payload could not be decoded: bad msgpack, wrong schema, bad tensor bytes."""


class ProtocolError(FedbusError):
    """A well-formed message that breaks a protocol rule (topic, node id, version)."""


class BrokerError(FedbusError):
    """The MQTT broker could not be started, reached or used."""


class ConfigError(FedbusError):
    """A configuration value is invalid; the message names the field."""


class DataError(FedbusError):
    """A device's own data cannot be used as given; the message names file, row and column."""


class KernelInputError(FedbusError, ValueError):
    """A numeric kernel was called with arrays of the wrong dtype, shape or layout."""


class UnsupportedVersionError(CodecError):
    """A message carries a protocol version this build does not speak."""


class PayloadTooLargeError(CodecError):
    """A payload exceeds the receiver's configured size limit; it is not even parsed."""


class ShapeMismatchError(CodecError):
    """Tensors decode fine but do not fit the model they claim to update."""
