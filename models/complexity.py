"""Closed-form decoder cost of the implicit models (multiply-accumulates, MACs), from their arguments.

Convention (as LMF's efficiency figure and spec §9.4): only the linear layers count (Linear, Conv);
gathers, element-wise work, cos/sin and the bilinear skip are free. The decoder is everything after
the encoder: per-LR-pixel work (3x3 convs of LTE, the latent MLP of LM models) plus per-query work
(the MLP evaluated for each of the K ensemble neighbours).

These formulas count the published algorithm. Our fast LM path evaluates the first render layer's cell
term once per query instead of once per neighbour, so its counted MACs are a little lower (about 2%).
"""


def linear_macs(layers):
    """Sum of in*out over the nn.Linear modules of a Sequential."""
    return sum(m.in_features * m.out_features for m in layers if hasattr(m, 'in_features'))


def conv_macs_per_pixel(conv):
    return conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups


def decoder_macs_per_pixel(model):
    """(MACs per LR pixel, MACs per HR query) of an implicit decoder; None if not an implicit model."""
    name = getattr(model, 'registry_name', None)
    K = 4 if getattr(model, 'local_ensemble', True) else 1
    if name == 'liif':
        if model.imnet is None:
            return 0, 0
        return 0, K * linear_macs(model.imnet.layers)
    if name == 'lte':
        per_lr = conv_macs_per_pixel(model.coef) + conv_macs_per_pixel(model.freq)
        per_hr = K * (model.phase.in_features * model.phase.out_features + linear_macs(model.imnet.layers))
        return per_lr, per_hr
    if name == 'metasr':
        imnet = linear_macs(model.imnet.layers)
        return 0, imnet + model.imnet.out_dim        # weight generation + (9C x 3) product
    if name == 'lmliif':
        return linear_macs(model.hypernet.layers), K * linear_macs(model.imnet.layers)
    if name == 'lmlte':
        phase = model.phase.in_features * model.phase.out_features
        per_lr = conv_macs_per_pixel(model.coef) + conv_macs_per_pixel(model.freq) + phase + \
            linear_macs(model.hypernet.layers)
        render_phase = model.imphase if model.mod_input else model.phase
        per_hr = K * (render_phase.in_features * render_phase.out_features + linear_macs(model.imnet.layers))
        return per_lr, per_hr
    return None


def decoder_macs(model, lr_size, out_size):
    """Closed-form decoder MACs for an (h, w) input decoded to (H, W); None if not an implicit model."""
    per = decoder_macs_per_pixel(model)
    if per is None:
        return None
    (h, w), (H, W) = lr_size, out_size
    return per[0] * h * w + per[1] * H * W
