"""Exception hierarchy: every error says whose fault it was."""


class MeshError(Exception):
    """Base class for every error meshvpn raises on purpose."""


class ConfigError(MeshError):
    """A configuration file or value is invalid."""


class RemoteProtocolError(MeshError):
    """The remote side sent something malformed or forbidden; drop it or close the link."""


class LocalProtocolError(MeshError):
    """This side asked a protocol object to do something the protocol forbids."""
