"""``python -m ecgrisk.finetune``."""

from ecgrisk.finetune.app import main

main()
