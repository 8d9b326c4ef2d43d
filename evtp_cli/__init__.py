"""evtp: benchmark visual-token pruning for instruction-based visual segmentation (IVS) MLLMs."""

__version__ = "0.1.0"
