"""The published MineWorld diagonal decoding, written out plainly as the reference for the
``published-diagonal`` schedule: a LLaMA forward over a cache of zeros with a slot for every
position, written as tokens are fed, read through the plain raster causal mask. Slow and
simple; it shares no code with mineworld's model, cache or decoder (only the weights)."""

import math

import torch
import torch.nn.functional as F

from mineworld.config import ACTION_TOKENS


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    first, second = x.chunk(2, -1)
    return torch.cat((-second, first), -1)


class ZeroCacheLlama:
    """A LLaMA decoder from ``transformers``-named weights, its KV cache zero-initialised."""

    def __init__(self, model):
        config = self.config = model.config
        self.weights = {name: w.detach().float() for name, w in model.state_dict().items()}
        shape = (config.num_hidden_layers, config.num_key_value_heads,
                 config.max_position_embeddings, config.head_dim)
        self.keys, self.values = torch.zeros(shape), torch.zeros(shape)
        dim = config.head_dim
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.arange(shape[2], dtype=torch.float64)[:, None] * inv_freq
        angles = torch.cat((angles, angles), -1)
        self.cos, self.sin = angles.cos().float(), angles.sin().float()

    @torch.no_grad()
    def __call__(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Logits ``[T, vocab]``; the tokens' keys and values are written at ``positions``."""
        config, w = self.config, self.weights
        heads, kv_heads, dim = (config.num_attention_heads, config.num_key_value_heads,
                                config.head_dim)
        positions = torch.tensor(positions)
        x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
        cos, sin = self.cos[positions], self.sin[positions]
        end = int(positions.max()) + 1
        causal = torch.arange(end)[None, :] > positions[:, None]  # raster order, nothing else
        for i in range(config.num_hidden_layers):
            layer = f"model.layers.{i}."
            h = rms_norm(x, w[layer + "input_layernorm.weight"], config.rms_norm_eps)
            q, k, v = (
                (h @ w[f"{layer}self_attn.{name}_proj.weight"].T).view(len(tokens), n, dim)
                .transpose(0, 1)
                for name, n in (("q", heads), ("k", kv_heads), ("v", kv_heads))
            )
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            self.keys[i][:, positions], self.values[i][:, positions] = k, v
            keys = self.keys[i][:, :end].repeat_interleave(heads // kv_heads, 0)
            values = self.values[i][:, :end].repeat_interleave(heads // kv_heads, 0)
            scores = (q @ keys.transpose(1, 2) / math.sqrt(dim)).masked_fill(causal, -math.inf)
            out = (scores.softmax(-1) @ values).transpose(0, 1).reshape(len(tokens), -1)
            x = x + out @ w[layer + "self_attn.o_proj.weight"].T
            h = rms_norm(x, w[layer + "post_attention_layernorm.weight"], config.rms_norm_eps)
            gate, up = (h @ w[f"{layer}mlp.{name}_proj.weight"].T for name in ("gate", "up"))
            x = x + (F.silu(gate) * up) @ w[layer + "mlp.down_proj.weight"].T
        return rms_norm(x, w["model.norm.weight"], config.rms_norm_eps) @ w["lm_head.weight"].T


def published_diagonal(model, prompt_frame: torch.Tensor, actions: list[torch.Tensor],
                       window: int) -> list[torch.Tensor]:
    """Greedy frames ``[rows, cols]``, one after each of ``actions`` (11 token ids each), from
    a one-frame prompt, as the published code decodes them: in pass ``t`` row ``r`` makes
    column ``t - r * window``; the input of cell (r, c) is the token of the cell before it,
    at that cell's position, and the first input of a row whose row above is not finished is
    the prompt frame's token there; unwritten slots stay zeros that every later query sees."""
    llama = ZeroCacheLlama(model)
    config = model.config
    rows, cols, codes = config.image_rows, config.image_cols, config.codebook_size
    prompt = prompt_frame.tolist()
    frames = []
    pending = prompt_frame.flatten().tolist()  # the prompt, then each frame's last token
    for index, action in enumerate(actions):
        frame_start = (index + 1) * config.tokens_per_frame
        prefix = pending + action.tolist()
        logits = llama(prefix, list(range(frame_start - len(prefix), frame_start)))
        frame = [[-1] * cols for _ in range(rows)]
        frame[0][0] = int(logits[-1, :codes].argmax())
        for t in range(1, cols + (rows - 1) * window):
            cells = [(r, t - r * window) for r in range(rows) if 0 <= t - r * window < cols]
            inputs, positions = [], []
            for r, c in cells:
                if c:
                    token = frame[r][c - 1]
                else:
                    token = frame[r - 1][-1] if frame[r - 1][-1] >= 0 else prompt[r - 1][-1]
                inputs.append(token)
                positions.append(frame_start + r * cols + c - 1)
            logits = llama(inputs, positions)
            for (r, c), row_logits in zip(cells, logits, strict=True):
                frame[r][c] = int(row_logits[:codes].argmax())
        frames.append(torch.tensor(frame))
        pending = [frame[-1][-1]]
    assert all(len(action) == ACTION_TOKENS for action in actions)
    return frames
