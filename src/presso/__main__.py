"""``python -m presso``, the same as the ``presso`` command (``torchrun -m presso distill ...``)."""

from presso.cli.main import entry

if __name__ == "__main__":
    entry()
