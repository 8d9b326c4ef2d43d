"""Token maps: which visual tokens each pruner keeps on one sample, drawn over the frames the LLM sees.

The figure is a grid: one column for the input (ground truth outlined) and one per pruner; one row per
key frame (the frames whose tokens the LLM receives; one row for an image). Kept tokens are shown at
full brightness with a coloured border, dropped ones dimmed. Each pruner chooses exactly as in an
evaluation: the model's own tokens (`model.encode`), k = max(1, round(ratio · N)), the same per-sample
seed. Token cells come from the tokens' (t, y, x) coordinates, so any backend with a regular token grid
per frame is drawn correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evtp_cli.errors import EvtpError

DIM = 0.3  # brightness of dropped tokens


@dataclass
class TokenMap:
    pruner: str
    keep: Any  # LongTensor of kept indices
    radius: float  # image-space covering radius of the kept set


def find_sample(dataset: Any, ref: str | None, limit: int = 200000) -> int:
    """The index of a sample given by id, or by index when `ref` is an integer (default: the first)."""
    n = len(dataset)
    if n == 0:
        raise EvtpError("the dataset has no samples")
    if ref is None or ref == "":
        return 0
    if ref.lstrip("-").isdigit():
        index = int(ref)
        if not 0 <= index < n:
            raise EvtpError(f"sample index {index} is outside the dataset (0..{n - 1})")
        return index
    for index in range(min(n, limit)):
        if dataset.sample_id(index) == ref:
            return index
    first = ", ".join(dataset.sample_id(i) for i in range(min(n, 3)))
    raise EvtpError(f"no sample with id {ref!r}; give an id (e.g. {first}) or an index 0..{n - 1}")


def key_frames(sample: Any, model: Any, count: int) -> list[int]:
    """The frame index shown for each key-frame slot (the model's frame policy when it has one)."""
    total = len(sample.frames)
    if count == 1 and total == 1:
        return [0]
    policy = getattr(getattr(model, "config", None), "frames", None)
    if policy:
        from evtp_cli.api import key_frame_indices

        try:
            keys = list(key_frame_indices(total, policy))
        except ValueError:
            keys = []
        if len(keys) == count:
            return keys
    return [int(round(x)) for x in np.linspace(0, total - 1, count)]


def token_maps(model: Any, sample: Any, pruners: list[tuple[str, Any]], ratio: float, seed: int) -> tuple[Any, list[TokenMap]]:
    from evtp_cli.bench.evaluate import select_pre_llm
    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.pruners.greedy import covering_radius

    tokens = model.encode(sample, StageTimer(str(model.device)))
    maps = []
    for name, pruner in pruners:
        if getattr(pruner, "stage", "pre-llm") != "pre-llm":
            raise EvtpError(f"{name} acts inside the model (stage {pruner.stage}); visualize draws pre-LLM selections only")
        keep = select_pre_llm(pruner, tokens, ratio, seed, sample.id).indices.cpu()
        maps.append(TokenMap(name, keep, covering_radius(tokens.coords.double().cpu(), keep)))
    return tokens, maps


def _cells(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(y, x) centres in [0, 1] and the cell height/width of the token grid of one frame."""
    ys, xs = np.unique(np.round(coords[:, 1], 6)), np.unique(np.round(coords[:, 2], 6))
    ch = float(np.min(np.diff(ys))) if len(ys) > 1 else 1.0
    cw = float(np.min(np.diff(xs))) if len(xs) > 1 else 1.0
    return coords[:, 1], coords[:, 2], ch, cw


def render(sample: Any, tokens: Any, maps: list[TokenMap], frames: list[int], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    coords = tokens.coords.double().cpu().numpy()
    frame_ids = tokens.frame_ids.cpu().numpy() if tokens.frame_ids is not None else np.zeros(len(coords), dtype=int)
    slots = sorted(set(int(f) for f in frame_ids))
    rows, cols = len(slots), len(maps) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.5), squeeze=False)
    for r, slot in enumerate(slots):
        frame_index = frames[r] if r < len(frames) else slot
        image = np.asarray(sample.frames[frame_index]).astype(np.float32) / 255.0
        h, w = image.shape[:2]
        on_frame = np.nonzero(frame_ids == slot)[0]
        cy, cx, ch, cw = _cells(coords[on_frame])
        gt = None if sample.masks is None else np.asarray(sample.masks[frame_index])
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.imshow(image)
                if gt is not None and gt.any():
                    ax.contour(gt.astype(float), levels=[0.5], colors="yellow", linewidths=1)
                if r == 0:
                    ax.set_title(f"input · {len(on_frame)} tokens/frame", fontsize=7)
                ax.set_ylabel(f"frame {frame_index}", fontsize=7)
                continue
            tmap = maps[c - 1]
            kept = np.zeros(len(coords), dtype=bool)
            kept[tmap.keep.numpy()] = True
            shade = np.full((h, w), DIM, dtype=np.float32)
            colour = f"C{(c - 1) % 10}"
            for i in on_frame[kept[on_frame]]:
                y0, x0 = (coords[i, 1] - ch / 2) * h, (coords[i, 2] - cw / 2) * w
                y1, x1 = (coords[i, 1] + ch / 2) * h, (coords[i, 2] + cw / 2) * w
                shade[max(0, int(round(y0))): int(round(y1)), max(0, int(round(x0))): int(round(x1))] = 1.0
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.6, edgecolor=colour))
            ax.imshow(image * shade[..., None])
            if gt is not None and gt.any():
                ax.contour(gt.astype(float), levels=[0.5], colors="yellow", linewidths=0.6)
            if r == 0:
                ax.set_title(f"{tmap.pruner}\n{int(tmap.keep.numel())}/{len(coords)} kept · radius {tmap.radius:.3f}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def visualize(model_spec: str, dataset_spec: str, sample_ref: str | None, pruner_specs: list[str], ratio: float, *, seed: int = 0,
              device: str = "cpu", frames: str | None = None, output: str | Path | None = None) -> tuple[Path, list[TokenMap], Any]:
    """Write the token-map grid of one sample; returns (png path, the maps, the sample)."""
    from evtp_cli.bench.report import slug
    from evtp_cli.bench.results import prepare_output
    from evtp_cli.bench.runner import (
        RunConfig,
        _model_overrides,
        canonical,
        open_dataset,
        parse_ratios,
        validate,
    )
    from evtp_cli.models import load_model
    from evtp_cli.pruners import get_pruner

    parse_ratios([ratio])
    validate(RunConfig(models=[model_spec], datasets=[dataset_spec], pruners=pruner_specs, ratios=[ratio], output=Path("."),
                       device=device, frames=frames), decodes_pruned=False)
    dataset = open_dataset(dataset_spec)
    index = find_sample(dataset, sample_ref)
    pruners = [(canonical(p), get_pruner(p)) for p in pruner_specs]
    model = load_model(model_spec, **_model_overrides(model_spec, device, frames))
    sample = dataset[index]
    tokens, maps = token_maps(model, sample, pruners, ratio, seed)
    slots = sorted(set(int(f) for f in tokens.frame_ids.cpu().tolist())) if tokens.frame_ids is not None else [0]
    shown = tokens.frames_shown if tokens.frames_shown is not None else key_frames(sample, model, len(slots))
    name = f"tokens_{slug(sample.id)}_r{ratio:g}.png"
    out = Path(output) if output is not None else Path("runs") / "visualize" / name
    if out.suffix.lower() != ".png":
        out = out / name
    prepare_output(out.parent)
    title = f"{sample.id} · {canonical(model_spec)} · keep ratio {ratio:g}\n“{sample.text}”"
    return render(sample, tokens, maps, shown, out, title), maps, sample
