"""Building blocks shared by several architectures, written once (``common``: DropPath, Mlp, token/map
reshapes, PatchEmbedNorm; ``window``: Swin window partition, masks and window attention)."""
from .common import DropPath, Mlp, PatchEmbedNorm, drop_path, map_to_tokens, tokens_to_map  # noqa: F401
from .window import (WindowAttention, relative_position_index, shifted_window_mask,  # noqa: F401
                     window_partition, window_reverse)
