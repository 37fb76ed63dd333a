"""Interim fast-path module (fp32, optional bf16 autocast): the interface the streaming segmenter calls; the measured levers replace it."""
from dataclasses import dataclass
import torch
@dataclass(frozen=True)
class FastPath:
    precision: str = "fp32"
    channels_last: bool = False
    fold_batchnorm: bool = False
    compile: str = "none"
    sw_batch_size: int = 1
    def describe(self):
        return f"{self.precision} batch {self.sw_batch_size}"
def choose_fast_path(network, device, precision="auto", channels_last="auto", fold_batchnorm="auto", compile="auto", sw_batch_size="auto"):
    return FastPath(precision="fp32" if precision == "auto" else precision, sw_batch_size=1 if sw_batch_size == "auto" else int(sw_batch_size))
def prepare_network(network, device, path, example_shape=(1, 1, 256, 256)):
    return network.eval() if isinstance(network, torch.nn.Module) else network
def predict_labels(module, batch, path):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=path.precision == "bf16"):
        return module(batch).float().max(dim=1).indices.to(torch.uint8).cpu()
