"""interplm-plugins: sparse-autoencoder features of protein language models for structural biologists.

Data flows one way: sequences -> embeddings -> SAE activations -> concept metrics / feature
database -> plugins. ``interplm_plugins.core`` holds every step; the PyMOL plugin, the napari
plugin and the ``interplm`` command line only call it.
"""

__version__ = "0.1.0"

from interplm_plugins.errors import InterPLMError

__all__ = ["InterPLMError", "__version__"]
