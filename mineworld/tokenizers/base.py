"""The interface every image tokenizer implements: uint8 RGB frames <-> grids of code ids.

The world model only sees code ids, so anything that turns frames into a fixed grid of ids (and
back) can serve as its tokenizer. This module holds what they all share: the pixel convention
(uint8 in, uint8 out, models work on floats in [-1, 1]), resizing of frames that arrive at another
size, and batching under `torch.inference_mode()` on the tokenizer's device and dtype. A concrete
tokenizer only implements `_encode_batch` and `_decode_batch` on float tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np
import torch


def uint8_to_float(frames: np.ndarray, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [T,H,W,3] -> float [T,3,H,W] in [-1, 1], i.e. (x/255 - 0.5) / 0.5."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    # Same float32 arithmetic as the reference preprocessing; cast to the model dtype last.
    x = x.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.5)
    return x.to(dtype)


def float_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [T,3,H,W] in [-1, 1] -> uint8 [T,H,W,3], rounding to the nearest level."""
    x = images.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def resize_frames(frames: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 [T,H,W,3] frames to `frame_size` = (width, height) with area interpolation."""
    width, height = frame_size
    if frames.shape[1:3] == (height, width):
        return frames
    resized = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack(resized) if resized else np.empty((0, height, width, 3), np.uint8)


class ImageTokenizer(ABC):
    """Maps uint8 RGB frames [T,H,W,3] to code ids [T,rows,cols] and back.

    Attributes:
        frame_size: (width, height) of the frames `decode` returns; `encode` resizes others to it.
        grid: (rows, cols) of the code grid of one frame.
        codebook_size: number of distinct code ids.
        device, dtype: where and in which precision the model runs.
    """

    def __init__(self, frame_size: tuple[int, int], grid: tuple[int, int], codebook_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.grid = (int(grid[0]), int(grid[1]))
        self.codebook_size = int(codebook_size)
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @abstractmethod
    def _encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """float [B,3,H,W] in [-1, 1] on self.device/self.dtype -> int64 ids [B,rows,cols]."""

    @abstractmethod
    def _decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        """int64 ids [B,rows,cols] on self.device -> float [B,3,H,W], nominally in [-1, 1]."""

    def encode(self, frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """uint8 [T,H,W,3] -> int64 ids [T,rows,cols] on `self.device`."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise TypeError(f"frames must be a uint8 numpy array, got {type(frames).__name__} "
                            f"of dtype {getattr(frames, 'dtype', None)}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must have shape [T,H,W,3], got {list(frames.shape)}")
        frames = resize_frames(frames, self.frame_size)
        chunks = [torch.empty((0, *self.grid), dtype=torch.long, device=self.device)]
        with torch.inference_mode():
            for start in range(0, len(frames), batch_size):
                x = uint8_to_float(frames[start:start + batch_size], self.device, self.dtype)
                chunks.append(self._encode_batch(x).long())
        return torch.cat(chunks)

    def decode(self, ids: torch.Tensor, batch_size: int = 16) -> np.ndarray:
        """int ids [T,rows,cols] -> uint8 [T,H,W,3] at `frame_size`."""
        if ids.ndim != 3 or tuple(ids.shape[1:]) != self.grid:
            raise ValueError(f"ids must have shape [T,{self.grid[0]},{self.grid[1]}], "
                             f"got {list(ids.shape)}")
        ids = ids.to(self.device, torch.long)
        # An out-of-range id would be a device-side assert on CUDA, which poisons the context.
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"ids must lie in [0, {self.codebook_size}), "
                             f"got range [{int(ids.min())}, {int(ids.max())}]")
        width, height = self.frame_size
        chunks = [np.empty((0, height, width, 3), np.uint8)]
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                chunks.append(float_to_uint8(self._decode_batch(ids[start:start + batch_size])))
        return np.concatenate(chunks)
