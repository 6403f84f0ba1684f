"""Stage 3: refinement of a fine-tuned bundle from cardiologist feedback -> ``model.pt``.

Modules: ``app`` (the Hydra app, ``refine(cfg)``), ``loop`` (ask, judge, learn, guard), ``policy`` (the
classifier as Bernoulli readings, and the guard), ``reward`` (the reward model), ``losses``
(DPO, Bradley-Terry and policy-gradient losses).

Run it as ``ecgrisk-refine`` or ``python -m ecgrisk.refine``.
"""
