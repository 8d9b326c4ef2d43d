import os

import numpy as np
import pytest
import torch

# keep the suite deterministic and light on the 2-core CI machine
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def grid_coords(height: int, width: int, frames: int = 1) -> torch.Tensor:
    """(t, y, x) patch-centre coordinates for a frames x height x width token grid, as models give them."""
    t = torch.arange(frames, dtype=torch.float32)
    t = t / (frames - 1) if frames > 1 else t
    y = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    tt, yy, xx = torch.meshgrid(t, y, x, indexing="ij")
    return torch.stack([tt.flatten(), yy.flatten(), xx.flatten()], dim=1)


def encode_capturing(model, sample, module: torch.nn.Module):
    """(the model's encode of the sample, what `module` returned during it), via a forward hook."""
    from evtp_cli.metrics.timing import StageTimer

    got = {}
    handle = module.register_forward_hook(lambda mod, args, out: got.update(out=out))
    try:
        tokens = model.encode(sample, StageTimer())
    finally:
        handle.remove()
    return tokens, got["out"]


_MODELS: dict[str, object] = {}


def load_script(name: str):
    """A script of benchmarks/ as a module, to call its functions and main() in-process. It is registered
    in sys.modules (dataclasses look their module up there)."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cached_model(spec: str, build=None):
    """The model for `spec`, built once per session (by `build()` if given, else `load_model(spec)`), with
    normal parameters even when first asked for inside inference mode."""
    if spec not in _MODELS:
        from evtp_cli.models import load_model

        with torch.inference_mode(False):
            _MODELS[spec] = build() if build is not None else load_model(spec)
    return _MODELS[spec]


@pytest.fixture
def one_thread():
    """One intra-op thread: these tensors are small, and on a busy 2-core machine two threads spin-wait
    on each other (the tiny-ivs sweep takes ~20 s with one thread, minutes with two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SAMPLE_DATASETS = ["synthetic-image:n=1", "synthetic-video:n=1,frames=4"]


@pytest.fixture(scope="module")
def samples():
    """One synthetic image and one 4-frame video (a module may define its own `samples`)."""
    from evtp_cli.data import load_dataset

    return {"image": load_dataset(SAMPLE_DATASETS[0])[0], "video": load_dataset(SAMPLE_DATASETS[1])[0]}
