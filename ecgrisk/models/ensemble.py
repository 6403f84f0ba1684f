"""Several fine-tuned classifiers scored as one: the mean of their calibrated logits.

Each member was calibrated on its own (``sigmoid(z / T + b)``, :mod:`ecgrisk.calibration`), so its
calibrated logit ``z / T + b`` is on the scale of the others whatever its architecture; raw
logits are not (a member with T = 14 on a statement would outvote one with T = 0.3). The mean is
taken per window, before the bundle's aggregation over windows; the ensemble's own calibration,
fitted on the validation fold like a single model's, maps it to probabilities
(``ecgrisk ensemble``, then ``ecgrisk recalibrate``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ecgrisk.models.classifier import ECGClassifier

__all__ = ["EnsembleClassifier"]


class EnsembleClassifier(nn.Module):
    """``mean_i(member_i(x) / T_i + b_i)``: one logit per label, as an :class:`ECGClassifier` gives.

    Parameters
    ----------
    members : fine-tuned classifiers with the same number of outputs.
    temperature, bias : ``[members, num_classes]``, each member's own calibration.
    scale, shift : ``[members]``, each member's input from the ensemble's: members fitted their
        scalers (one mean and std over the training values) on their own training sets, and
        the bundle scales once, so member ``i`` sees ``x * scale[i] + shift[i]``. Default: as is.
    """

    def __init__(self, members: list[ECGClassifier], temperature, bias,
                 scale=None, shift=None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        outputs = {m.num_classes for m in members}
        if len(outputs) != 1:
            raise ValueError(f"the members give different numbers of outputs: {sorted(outputs)}")
        self.members = nn.ModuleList(members)
        self.num_classes = outputs.pop()
        shape = (len(members), self.num_classes)
        t, b = (torch.as_tensor(np.asarray(v, np.float32)) for v in (temperature, bias))
        if tuple(t.shape) != shape or tuple(b.shape) != shape:
            raise ValueError(f"temperature and bias must be {list(shape)} (members x outputs), got "
                             f"{list(t.shape)} and {list(b.shape)}")
        self.register_buffer("temperature", t)
        self.register_buffer("bias", b)
        self.register_buffer("scale", torch.ones(len(members)) if scale is None
                             else torch.as_tensor(np.asarray(scale, np.float32)))
        self.register_buffer("shift", torch.zeros(len(members)) if shift is None
                             else torch.as_tensor(np.asarray(shift, np.float32)))

    @property
    def spec(self) -> list[dict]:
        """Each member's :attr:`ECGClassifier.spec`; :meth:`from_spec` rebuilds the ensemble."""
        return [m.spec for m in self.members]

    @classmethod
    def from_spec(cls, spec: list[dict]) -> EnsembleClassifier:
        """The architecture :attr:`spec` names, with placeholder calibrations (the state dict
        holds the real ones)."""
        members = [ECGClassifier.from_spec(s) for s in spec]
        shape = (len(members), members[0].num_classes)
        return cls(members, np.ones(shape), np.zeros(shape))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` for ``x [B, leads, T]``."""
        z = [m(x * self.scale[i] + self.shift[i]).float() / self.temperature[i] + self.bias[i]
             for i, m in enumerate(self.members)]
        return torch.stack(z).mean(dim=0)
