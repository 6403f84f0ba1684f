"""Stage 2: fine-tuning an encoder on labelled ECGs into a calibrated model bundle -> ``model.pt``.

Modules: ``app`` (the Hydra app, ``train(cfg)``) and ``module`` (the LightningModule: BCE on crops,
window-aggregated evaluation).

Run it as ``ecgrisk-finetune`` or ``python -m ecgrisk.finetune``.
"""
