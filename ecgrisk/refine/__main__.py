"""``python -m ecgrisk.refine``."""

from ecgrisk.refine.app import main

main()
