"""The package's version, in a module of its own: cli and the client read it without importing the package root."""

__version__ = "0.1.0"
