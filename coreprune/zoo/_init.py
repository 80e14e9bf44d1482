"""Weight initialisation shared by the model zoo.

He et al. (2015) derived the Kaiming scale for ReLU networks; the ResNet paper initialises
convolutions with it using the fan-out, which is what we do for every conv here.
"""

from __future__ import annotations

from torch import nn


def kaiming_init_(model: nn.Module) -> nn.Module:
    """Initialise ``model`` in place: He-normal convs (fan-out), He-normal linears (fan-in),
    zero biases, batch norms at identity. Returns the model for chaining."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
