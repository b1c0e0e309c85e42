"""The entry point of `tfcompress.export.isolation`'s child processes (``python -m`` runs this).

A module of its own so that ``python -m`` does not execute `isolation` a second time as
``__main__`` (its `phase` reports would then go through a copy that has no channel).
"""

from tfcompress.export.isolation import serve

if __name__ == "__main__":
    serve()
