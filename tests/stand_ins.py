"""A tiny model and tokenizer that the session, app and benchmark tests share: they run in
milliseconds and make every frame a function of the model's tokens."""

import torch

from mineworld.config import ModelConfig
from mineworld.model import Transformer
from mineworld.tokenizers.base import ImageTokenizer

ROWS, COLS, CODES = 2, 3, 100
FRAME_TOKENS = ROWS * COLS + 11  # 17
CONTEXT_FRAMES = 4
WIDTH, HEIGHT = 4 * COLS, 4 * ROWS


class PatchTokenizer(ImageTokenizer):
    """One id per 4x4 patch, from its mean red level."""

    def __init__(self, rows=ROWS, cols=COLS, codes=CODES):
        super().__init__(frame_size=(4 * cols, 4 * rows), grid=(rows, cols), codebook_size=codes)

    def _encode_batch(self, images):
        patches = torch.nn.functional.avg_pool2d(images[:, :1], 4)[:, 0]
        return ((patches + 1) / 2 * (self.codebook_size - 1)).round().long()

    def _decode_batch(self, ids):
        level = ids.float() / (self.codebook_size - 1) * 2 - 1
        return level[:, None].repeat_interleave(4, -1).repeat_interleave(4, -2).repeat(1, 3, 1, 1)


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=CODES + 70, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=CONTEXT_FRAMES * FRAME_TOKENS,
        image_rows=ROWS, image_cols=COLS, codebook_size=CODES,
    )
    return Transformer(config).eval()


class StartRecentKVCache:
    """StreamingLLM's reference policy, written against the (K, V) protocol (its defaults fit
    the tiny model's 68 positions, so that a command line can name it as a class path)."""

    def __init__(self, start_size=2, recent_size=30):
        self.start_size, self.recent_size = start_size, recent_size
        self.cache_size = start_size + recent_size

    def __call__(self, past_key_values):
        return self.evict_for_space(past_key_values, 0)

    def evict_for_space(self, past_key_values, num_coming):
        seq_len = past_key_values[0][0].size(2)
        if seq_len + num_coming <= self.start_size + self.recent_size:
            return past_key_values
        keep_from = seq_len - self.recent_size + num_coming
        return [
            [torch.cat([t[:, :, : self.start_size], t[:, :, keep_from:]], dim=2) for t in kv]
            for kv in past_key_values
        ]


class UnsizedStartRecent(StartRecentKVCache):
    """The same policy with no ``cache_size``: its budget must be given."""

    def __init__(self):
        super().__init__()
        del self.cache_size


class NeedsArguments(StartRecentKVCache):
    """A policy that cannot be made without arguments."""

    def __init__(self, start_size, recent_size):
        super().__init__(start_size, recent_size)
