"""The torch backend: `rsparse_cpp.gpu.load(path, device="cuda")` is Model.load with weights, KV cache and
activations on a torch device, R-Sparse decode through the CUDA kernel (see model.py). torch is needed only here."""
from .model import TorchModel, TorchSparse, load

__all__ = ["TorchModel", "TorchSparse", "load"]
