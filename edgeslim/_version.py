"""The package version, in a module of its own that imports nothing: the stages record it (manifests, reports,
the server's metadata) without importing the package root, which re-exports every stage."""

__version__ = "0.1.0"
