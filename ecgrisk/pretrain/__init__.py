"""Stage 1: self-supervised pretraining of an encoder on unlabeled ECGs -> ``encoder.pt``.

Modules: ``app`` (the Hydra app, ``train(cfg)``), ``module`` (the LightningModule), ``objectives``
(``build_objective``), ``masked``, ``contrastive``, ``cpc`` and ``jepa`` (one objective a file),
``augment`` (views), ``probe`` (the linear probe logged during pretraining).

Run it as ``ecgrisk-pretrain`` or ``python -m ecgrisk.pretrain``.
"""
