"""GIF: gradient-informed fingerprinting, a training-data provenance explorer.

``build(samples, out)`` makes an index directory; ``Engine.load(out).attribute(text)`` ranks the
training samples a model output most likely came from, with each evidence channel's scores.
"""

__version__ = "0.1.0"

from .config import BuildConfig  # noqa: E402
from .data import Sample, read_corpus  # noqa: E402
from .errors import GIFError  # noqa: E402

__all__ = ["BuildConfig", "Engine", "GIFError", "Sample", "__version__", "build", "read_corpus"]


def __getattr__(name):
    # the engine pulls in torch, faiss and transformers: import it only when asked for
    if name in ("Engine", "build"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
