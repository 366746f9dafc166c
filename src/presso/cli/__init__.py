"""The ``presso`` command: a thin layer over the Python API, one module per sub-command."""
