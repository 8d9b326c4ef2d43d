"""fastervlm: the published FasterVLM rule ([CLS] attention, top-k, before the projector).

Paper: Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning: Make VLM
Inference Faster" (FasterVLM), arXiv 2412.01818. Code: github.com/Theia-4869/FasterVLM (`llava_arch.py`),
and the llmc re-implementation (ModelTC/llmc `token_reduction/fastervlm.py`).

Rule: the [CLS] token's attention to the patch tokens at the vision select layer, averaged over heads;
keep the top-k patch tokens (in their original order) and drop the rest before the projector.
Defaults: none beyond the budget (the paper reports 75 %, 90 % and 95 % reduction; here the keep ratio
comes from the run).

Differences from the public code:
- Encoders without a [CLS] token (tiny-ivs; SigLIP / InternViT in the Sa2VA backends) use the mean
  attention each token receives at that layer instead, the substitute VisionZip's own SigLIP code uses
  (`stages.attention_received`). The backend states which it gave in `context.extras["attention_kind"]`.
- Video: each frame is encoded on its own, so the budget is split evenly over the frames and each
  frame keeps its own top tokens (the public code handles one image, or Video-LLaVA frames likewise).
- Ties keep the lower index (torch.topk leaves ties unspecified).
"""

from __future__ import annotations

from dataclasses import dataclass

from evtp_cli.pruners.stages import FrameResult, VisionPruner, topk_sorted


class FasterVLM(VisionPruner):
    """FasterVLM: top-k visual tokens by [CLS] attention (or mean attention received)."""

    name = "fastervlm"
    needs = ("attention",)

    @dataclass
    class Config:
        pass

    def _frame(self, features, k, attention, keys, heads) -> FrameResult:
        return FrameResult(topk_sorted(attention, k))
