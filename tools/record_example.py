"""An example USER.py for `tools/record_calibration.py record`: build() returns (model, batches).

    python3 tools/record_calibration.py record tools/record_example.py --rows rows.safetensors
"""
import torch


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(128, 512))
    model.add_module("act", torch.nn.GELU())
    model.add_module("fc2", torch.nn.Linear(512, 128))
    batches = [torch.randn(8, 32, 128) for _ in range(4)]  # 4 batches of [batch, tokens, features]
    return model, batches
