"""Command-line tools that work on files outside the package (weight converters)."""
