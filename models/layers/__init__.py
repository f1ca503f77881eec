"""Building blocks shared by several architectures, written once (``common``: DropPath, Mlp, ConvFFN, token/map
reshapes, PatchEmbedNorm; ``window``: Swin window partition, masks, relative position biases and window attention;
``trunk``: the residual token trunk of SwinIR / HAT / SRFormer / ATD)."""
from .common import (ConvFFN, DropPath, Mlp, PatchEmbedNorm, drop_path, map_to_tokens,  # noqa: F401
                     tokens_to_map)
from .window import (WindowAttention, WindowSelfAttention, region_mask, relative_position_bias,  # noqa: F401
                     relative_position_index, shifted_window_labels, shifted_window_mask, split_heads,
                     window_attention, window_partition, window_reverse)
