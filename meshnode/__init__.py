"""meshnode: a peer-to-peer compute mesh for edge fleets, on Bacalhau's job model."""

__all__ = ["__version__"]

__version__ = "0.1.0"
