"""latentscope: explore the latent space of diffusion-model autoencoders on your own images."""

__version__ = "0.1.0"

from .errors import LatentscopeError  # noqa: E402

__all__ = ["__version__", "LatentscopeError", "encode", "annotate", "train", "Codec", "Scope"]


def __getattr__(name):
    # Heavy modules (torch, diffusers) load on first use so `import latentscope` stays quick.
    if name == "encode":
        from .ingest import encode

        return encode
    if name == "annotate":
        from .metadata import annotate

        return annotate
    if name == "train":
        from .training import train

        return train
    if name == "Codec":
        from .codec import Codec

        return Codec
    if name == "Scope":
        from .scope import Scope

        return Scope
    raise AttributeError(f"module 'latentscope' has no attribute {name!r}")
