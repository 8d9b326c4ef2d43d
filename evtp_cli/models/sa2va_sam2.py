"""SAM2 as Sa2VA's mask decoder, on transformers' `Sam2VideoModel`: language prompts and propagation.

Sa2VA turns the [SEG] hidden state into one extra sparse prompt token for SAM2: its extension of
`SAM2Base._forward_sam_heads` concatenates the projected embedding to the sparse prompt embeddings (which,
with no clicks, hold SAM2's padding "not a point" tokens), and its `language_embd_inference` adds that
prompt on each of the first `num_frames` frames (the frames the LLM saw) with `add_language_embd`, then
runs `propagate_in_video` over all frames and reads the mask logits. Images are the one-frame case.

Here the same happens with transformers' classes (read: `modeling_sam2_video.py` of the installed
transformers, `Sam2VideoInferenceSession`, `Sam2VideoModel.forward` / `propagate_in_video_iterator`):

- each prompted frame gets a point input at (0, 0) with label -1, i.e. exactly the "no click" padding SAM2
  uses, so it becomes an initial conditioning frame; while that frame runs, a forward hook on the prompt
  encoder appends the [SEG] embedding to the sparse embeddings (`LanguagePrompt`);
- propagation then reuses the conditioning outputs and tracks every other frame from memory, as SAM2's
  video predictor does;
- low-resolution mask logits are upsampled to SAM2's input size (1024) and then to the frame size,
  bilinearly, and thresholded at 0 (sigmoid > 0.5), as Sa2VA's `predict_forward` does.

The image encoder runs once per frame (`encode_frames`); its features go into the session's cache, so the
encoder is not run again per [SEG] token or per frame visit.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from evtp_cli.models.sa2va_common import sam2_pixels


def sam2_config(preset: str):
    """`tiny` (a few small layers at 128 px, for tests) or `hiera-l` (SAM 2.0 Hiera-L at 1024 px, as Sa2VA)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig
    from transformers.models.sam2_video.configuration_sam2_video import (
        Sam2VideoMaskDecoderConfig,
        Sam2VideoPromptEncoderConfig,
    )

    if preset == "hiera-l":
        hiera = Sam2HieraDetConfig(
            hidden_size=144,
            embed_dim_per_stage=[144, 288, 576, 1152],
            num_attention_heads_per_stage=[2, 4, 8, 16],
            blocks_per_stage=[2, 6, 36, 4],
            global_attention_blocks=[23, 33, 43],
            window_positional_embedding_background_size=[7, 7],
            window_size_per_stage=[8, 4, 16, 8],
        )
        vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[1152, 576, 288, 144])
        # SAM 2.0 (what Sa2VA ships): no temporal encoding of object pointers, no occlusion embedding
        return Sam2VideoConfig(
            vision_config=vision,
            enable_temporal_pos_encoding_for_object_pointers=False,
            enable_occlusion_spatial_embedding=False,
        )
    if preset == "tiny":
        size, width = 128, 128
        hiera = Sam2HieraDetConfig(
            hidden_size=16,
            embed_dim_per_stage=[16, 32, 64, 128],
            num_attention_heads_per_stage=[1, 1, 2, 2],
            blocks_per_stage=[1, 1, 2, 1],
            global_attention_blocks=[3],
            window_size_per_stage=[8, 4, 4, 4],
            window_positional_embedding_background_size=[4, 4],
            image_size=[size, size],
        )
        vision = Sam2VisionConfig(
            backbone_config=hiera,
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]],
            fpn_hidden_size=width,
        )
        # memories stay 64 wide (transformers reads 64-dim memories) and the model width a multiple of it
        return Sam2VideoConfig(
            vision_config=vision,
            # config objects, not dicts: transformers 5.17 built the mask decoder's sub-config from a dict as a
            # prompt-encoder config (AttributeError num_multimask_outputs on the H100 check)
            prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=width, image_size=size, patch_size=16, mask_input_channels=4),
            mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=width, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
            image_size=size,
            memory_attention_hidden_size=width,
            memory_attention_num_layers=1,
            memory_attention_feed_forward_hidden_size=64,
            memory_attention_rope_feat_sizes=[size // 16, size // 16],
            memory_encoder_hidden_size=width,
            memory_encoder_output_channels=64,
            mask_downsampler_embed_dim=width,
            memory_fuser_embed_dim=width,
            memory_fuser_intermediate_dim=64,
            memory_fuser_num_layers=1,
            enable_temporal_pos_encoding_for_object_pointers=False,
            enable_occlusion_spatial_embedding=False,
        )
    raise ValueError(f"unknown SAM2 preset {preset!r}; use 'tiny' or 'hiera-l'")


def mask_downsampler_layers(config) -> int:
    """How many conv layers SAM2's mask downsampler has (total stride 16 in steps of 2 -> 4)."""
    import math

    return int(round(math.log(config.mask_downsampler_total_stride) / math.log(config.mask_downsampler_stride)))


class LanguagePrompt:
    """Appends a prompt embedding to the SAM2 prompt encoder's sparse output while `active(...)` is on."""

    def __init__(self, prompt_encoder: torch.nn.Module):
        self.embedding: torch.Tensor | None = None
        self.handle = prompt_encoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.embedding is None:
            return output
        sparse, dense = output
        extra = self.embedding.to(dtype=sparse.dtype, device=sparse.device).reshape(1, 1, 1, -1)
        extra = extra.expand(sparse.shape[0], sparse.shape[1], 1, -1)
        return torch.cat([sparse, extra], dim=2), dense

    @contextlib.contextmanager
    def active(self, embedding: torch.Tensor) -> Iterator[None]:
        self.embedding = embedding
        try:
            yield
        finally:
            self.embedding = None


class Sa2VAMaskDecoder:
    """Drives a `Sam2VideoModel` the way Sa2VA drives SAM2: language prompts on key frames, then propagation."""

    OBJECT_ID = 1

    def __init__(self, sam):
        self.sam = sam
        self.prompt = LanguagePrompt(sam.prompt_encoder)

    @property
    def size(self) -> int:
        return int(self.sam.config.image_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.sam.parameters()).dtype

    @torch.inference_mode()
    def encode_frames(self, frames, device, chunk: int = 4) -> list[dict]:
        """Image-encoder features of every frame (uint8 [H, W, 3] arrays), in the layout the session cache holds.

        Frames are resized and normalised a chunk at a time. Only the last level's positional encoding is
        kept: memory attention reads no other (the high-resolution levels only feed the mask decoder).
        """
        out = []
        for start in range(0, len(frames), chunk):
            batch = sam2_pixels(frames[start : start + chunk], self.size).to(device=device, dtype=self.dtype)
            enc = self.sam.get_image_features(batch, return_dict=True)
            for i in range(batch.shape[0]):
                out.append(
                    {
                        "vision_feats": [f[:, i : i + 1] for f in enc.fpn_hidden_states],
                        "vision_pos_embeds": [enc.fpn_position_encoding[-1][:, i : i + 1]],
                    }
                )
        return out

    def _session(self, features: list[dict]):
        from transformers.models.sam2_video.modeling_sam2_video import (
            Sam2VideoInferenceSession,
        )

        device = features[0]["vision_feats"][0].device
        session = Sam2VideoInferenceSession(
            inference_device=device,
            inference_state_device=device,
            video_storage_device=device,
            dtype=self.dtype,
            max_vision_features_cache_size=len(features),
        )
        session.processed_frames = dict.fromkeys(range(len(features)))  # frames are never read: all cached
        for i, feats in enumerate(features):
            session.cache.cache_vision_features(i, feats)
        return session

    @torch.inference_mode()
    def segment(self, features: list[dict], embedding: torch.Tensor, prompt_frames: list[int]) -> torch.Tensor:
        """Low-resolution mask logits [T, h, w] for one projected [SEG] embedding [sam_dim]."""
        session = self._session(features)
        obj_idx = session.obj_id_to_idx(self.OBJECT_ID)
        device = features[0]["vision_feats"][0].device
        no_click = {
            "point_coords": torch.zeros(1, 1, 1, 2, device=device, dtype=self.dtype),
            "point_labels": -torch.ones(1, 1, 1, device=device, dtype=torch.int32),
        }
        for frame in sorted(set(prompt_frames)):
            session.add_point_inputs(obj_idx, frame, no_click)
            if self.OBJECT_ID not in session.obj_with_new_inputs:
                session.obj_with_new_inputs.append(self.OBJECT_ID)
            with self.prompt.active(embedding):
                self.sam(session, frame_idx=frame)
        logits: dict[int, torch.Tensor] = {}
        start = min(prompt_frames)
        for reverse in (False, True):
            if reverse and start == 0:
                continue
            for out in self.sam.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
                logits[int(out.frame_idx)] = out.pred_masks[0, 0]
        return torch.stack([logits[i] for i in range(len(features))])

    def to_masks(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[T, h, w] logits -> bool [T, H, W]: up to SAM2's input size, then to the frame size; > 0."""
        x = logits[:, None].float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x[:, 0] > 0
