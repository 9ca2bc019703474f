"""The command-line programs: each module is one command, imported by nothing but its ``python -m`` alias."""
