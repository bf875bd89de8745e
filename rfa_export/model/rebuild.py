"""rebuilt: a model rebuilt under a changed config with the same weights (with_state_dtype uses it)."""

import torch
from torch import nn


def rebuilt(model: nn.Module, config) -> nn.Module:
    """type(model)(config) holding copies of model's weights, each on its device and in its dtype (tied weights
    stay tied), in the same training mode. The config must not change any weight's shape."""
    converted = type(model)(config)
    with torch.no_grad():
        for name, p in converted.named_parameters():  # a tied parameter comes once
            source = model.get_parameter(name)
            p.data = p.data.to(source.device, source.dtype)
            p.requires_grad_(source.requires_grad)
        for module_name, module in converted.named_modules():
            for name, b in module.named_buffers(recurse=False):
                source = model.get_buffer(f"{module_name}.{name}" if module_name else name)
                setattr(module, name, b.to(source.device, source.dtype))
    converted.load_state_dict(model.state_dict())
    return converted.train(model.training)
