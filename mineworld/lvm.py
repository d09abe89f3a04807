"""What the loaders give: the decoder and its image tokenizer together, in the published shape.

MineWorld's own model object (``lvm.LlamaLVM``) holds the decoder as ``.transformer`` and the
tokenizer as ``.tokenizer``, and its KV integration is used as
``model.transformer.setup_cache_manager("h2o", hh_ratio=0.1)``; this one does the same and
also unpacks, ``transformer, tokenizer = load_embedded()``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .model import Transformer


class LlamaLVM(NamedTuple):
    transformer: Transformer
    tokenizer: Any  # VQGANTokenizer or EmbeddedTokenizer: encode(frames), decode(ids)
