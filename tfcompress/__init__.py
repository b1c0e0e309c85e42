"""tfcompress: Keras 3 model compression with verified edge export."""

__version__ = "0.1.0"
