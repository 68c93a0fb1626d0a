"""The package version: one place, read by the package, its files' headers and the build."""

__version__ = "0.1.0"
