"""The dataset base class and lazy frames; the sample contract itself is `evtp_cli.api.Sample`."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from evtp_cli.api import Sample, Task

__all__ = ["Dataset", "LazyFrames", "Sample", "Task"]

class LazyFrames(Sequence[np.ndarray]):
    """Frames read on access by `loader(i)`, so a video's JPEGs are only decoded when a model asks."""

    def __init__(self, count: int, loader: Callable[[int], np.ndarray]):
        self._count = count
        self._loader = loader

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._loader(i) for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._loader(index)


class Dataset:
    """A sized iterable of samples. Subclasses implement `__len__` and `get(i)`.

    `name`, `split` and `task` are what result rows report.
    """

    name: str = ""
    split: str = ""
    task: Task = "image"

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, index: int) -> Sample:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        """The id of sample `index` without loading its pixels (used to resume and to shard)."""
        return self.get(index).id

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.get(index)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.get(i)
