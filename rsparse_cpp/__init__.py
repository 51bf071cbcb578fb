"""rsparse.cpp runtime: GGUF -> weights -> decode loop -> native kernels -> sampler -> text."""
__version__ = "0.1.0"
__all__ = ["Llama"]


def __getattr__(name):  # lazy, so that `rsparse_cpp.constants` stays importable without the native library
    if name == "Llama":
        from .llama import Llama

        return Llama
    raise AttributeError(name)
