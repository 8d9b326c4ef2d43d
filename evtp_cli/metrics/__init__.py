"""Segmentation metrics (numpy bool masks [H, W]) and latency timing. Definitions: docs/datasets.md (gIoU/cIoU, J/F/J&F)."""

from evtp_cli.metrics.segmentation import (
    IoUAccumulator,
    JFAccumulator,
    boundary_f,
    region_similarity,
    seg2bmap,
)

__all__ = ["IoUAccumulator", "JFAccumulator", "boundary_f", "region_similarity", "seg2bmap"]
