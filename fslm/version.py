"""The package version, in a leaf module: code anywhere in fslm reads it without importing the package facade."""

__version__ = "0.1.0"  # keep equal to pyproject.toml [project] version
