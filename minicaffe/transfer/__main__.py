"""``python -m minicaffe.transfer``: see :mod:`minicaffe.transfer.cli`."""
from ..cli import exit_with
from .cli import main

exit_with(main)
