"""gremlinkit: personas, sign flips and persistent features in language models, with nnsight and sae_lens.

``import gremlinkit`` does no work: the heavy libraries load on first use.
"""

from gremlinkit.errors import GremlinkitError

__all__ = ["GremlinkitError", "load"]
__version__ = "0.1.0"


def load(name_or_path, *, sae=None, device=None, dtype=None, bos=None, remote=False, validate=False, **kwargs):
    """Load a model (zoo name, local HF directory or hub id) with an optional SAE; ``validate=True``
    runs the self-check first (`gremlinkit.check`). See `gremlinkit.subject.load`."""
    from gremlinkit.subject import load as _load

    return _load(name_or_path, sae=sae, device=device, dtype=dtype, bos=bos, remote=remote, validate=validate,
                 **kwargs)
