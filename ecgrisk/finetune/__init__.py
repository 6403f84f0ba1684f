"""Stage 2: fine-tuning an encoder on labelled ECGs into a calibrated model bundle -> ``model.pt``.

Modules: ``app`` (the Hydra app, ``train(cfg)``), ``module`` (the LightningModule: BCE on crops,
window-aggregated evaluation) and ``teacher`` (self-training: ``finetune.teacher`` labels the
training records ``data.train_fraction`` leaves out).

Run it as ``ecgrisk-finetune`` or ``python -m ecgrisk.finetune``.
"""
