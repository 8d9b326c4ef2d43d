"""Prediction masks in the layout the referring-video challenge servers expect, zipped.

Ref-YouTube-VOS (ReferFormer docs/Ref-Youtube-VOS.md: `zip -r submission.zip Annotations`) and ReVOS/Ref-DAVIS
tools read `Annotations/<video>/<exp_id>/<frame>.png`; MeViS (README, sample_submission_valid.zip) wants the
video folders at the top of the zip. Masks are single-channel PNGs with 0 for background and 255 for the
target, as ReferFormer and Sa2VA write them (the evaluations binarise with > 0).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from evtp_cli.errors import EvtpError


class SubmissionWriter:
    """Writes one expression's masks at a time (no video is kept in memory), then zips the folder.

    >>> writer = SubmissionWriter(out_dir, prefix="Annotations")
    >>> writer.add("video", "0", ["00000", "00005"], masks)   # bool [T, H, W]
    >>> zip_path = writer.finish()                           # out_dir + ".zip"
    """

    def __init__(self, out_dir: str | Path, prefix: str = "Annotations"):
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.base = self.out_dir / prefix if prefix else self.out_dir
        self.count = 0

    def add(self, video_id: str, exp_id: str, frame_names: Sequence[str], masks: np.ndarray) -> Path:
        """Write `<prefix>/<video_id>/<exp_id>/<frame>.png` for every frame; returns the expression folder."""
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(masks) != len(frame_names):
            raise ValueError(f"{video_id}/{exp_id}: {len(frame_names)} frame names but masks of shape {masks.shape}")
        folder = self.base / video_id / str(exp_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, mask in zip(frame_names, masks):
            Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8)).save(folder / f"{name}.png")
        self.count += 1
        return folder

    def finish(self, zip_path: str | Path | None = None) -> Path:
        """Zip everything under the output folder (paths relative to it) and return the zip's path."""
        if self.count == 0:
            raise EvtpError(f"no predictions were written to {self.out_dir}; nothing to submit")
        # name + ".zip", not with_suffix: folder names such as "evtp@0.2" contain dots
        target = Path(zip_path) if zip_path is not None else self.out_dir.parent / (self.out_dir.name + ".zip")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(self.out_dir.rglob("*.png")):
                archive.write(path, path.relative_to(self.out_dir).as_posix())
        return target


def submission_prefix(dataset: object) -> str:
    """The folder the dataset's challenge expects at the top of the zip ("Annotations" unless the reader says)."""
    return getattr(dataset, "submission_prefix", "Annotations")
