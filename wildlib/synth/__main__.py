"""``python -m wildlib.synth``: render the embedded dataset (see :func:`wildlib.synth.main`)."""

from .dataset import main

main()
