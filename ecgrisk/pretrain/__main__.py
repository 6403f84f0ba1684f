"""``python -m ecgrisk.pretrain``."""

from ecgrisk.pretrain.app import main

main()
