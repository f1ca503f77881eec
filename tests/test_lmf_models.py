"""The remaining published LMF models (issue 12, item 3): ``lte-fast``, ``ciaosr``, ``lmciaosr``.

Golden cases (../shared/golden, outputs of the published code) to 1e-4, evaluated on random subsets of
each query grid (every query is independent of the others, so a subset of the published output is the
output of the subset); parameter counts of the published models; official-format checkpoints;
CMSR table building and rendering for LM-CiaoSR; the ``-fast`` dataset wrappers and test configs;
closed-form decoder MACs against PyTorch's FLOP counter.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import datasets
import models
from models.decoders.ciaosr import CrossScaleAttention, nonlocal_macs_per_pixel, tiled_nonlocal
from models.decoders.lte import bilinear_skip
from utils.config import load_config
from utils.coords import make_cell, make_coord

from engine import cmsr

from .conftest import load_golden

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
N_SUBSET = 300


def golden_model(name):
    return models.make(load_golden(name)['model'], load_sd=True).eval()


def subset(n, k=N_SUBSET, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:min(k, n)]


def query(q):
    H, W = q['size']
    return make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0) * q['cell_clip']


def decoder_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith('encoder.'))


# ---------------------------------------------------------------------------------------------------
# golden outputs
# ---------------------------------------------------------------------------------------------------
def check_ciaosr(name):
    case = load_golden(name)
    model = golden_model(name)
    with torch.no_grad():
        state = model.prepare(case['inp'])             # CiaoSR's per-image state does not depend on the cell
        for i, q in enumerate(case['queries']):
            coord, cell = query(q)
            idx = subset(coord.shape[1], seed=i)
            pred = model.query(state, coord[:, idx], cell[:, idx])
            assert (pred - q['pred'][:, idx]).abs().max().item() <= TOL, f"{name} {q['size']}"
        pred = model(case['inp'], coord[:, idx], cell[:, idx])          # forward = prepare + query
    assert (pred - q['pred'][:, idx]).abs().max().item() <= TOL


def test_golden_ciaosr():
    check_ciaosr('ciaosr_edsr')


@pytest.mark.slow
def test_golden_ciaosr_tiled_nonlocal():
    """ciaosr_edsr_big: a 146x98 input, whose non-local attention runs in 3 x 2 tiles of 48x48 (about
    20 GMACs of attention: slow on a small CPU)."""
    check_ciaosr('ciaosr_edsr_big')


def test_golden_lmciaosr_eval_and_training_paths():
    """Eval ``pred``; the training path (with the LR skip: B1 fixed) equals the published training output
    plus the skip, which is ``pred`` at ``train_idx``; the fast path agrees with the training path."""
    case = load_golden('lmciaosr_edsr')
    model = golden_model('lmciaosr_edsr')
    inp = case['inp']
    for i, q in enumerate(case['queries']):
        coord, cell = query(q)
        idx, t = subset(coord.shape[1], seed=i), q['train_idx']
        skip = bilinear_skip(inp, coord[:, t])
        with torch.no_grad():
            state = model.prepare(inp, cell)                          # per image (and cell): shared below
            pred = model.query(state, coord[:, idx], cell[:, idx])     # eval: the fast path
            fast = model.query(state, coord[:, t], cell[:, t])
            model.train()
            try:
                train = model.query(state, coord[:, t], cell[:, t])   # training path (explicit modulations)
                if i == 4:                                            # the whole training-mode forward
                    model.encoder.eval()
                    assert torch.equal(model(inp, coord[:, t], cell[:, t]), train)
            finally:
                model.eval()
        assert (pred - q['pred'][:, idx]).abs().max().item() <= TOL, f"eval {q['size']}"
        assert (train - (q['train_pred'] + skip)).abs().max().item() <= TOL, f"train {q['size']}"
        assert (train - q['pred'][:, t]).abs().max().item() <= TOL
        assert (fast - train).abs().max().item() <= 1e-5


def test_golden_lmciaosr_through_the_engine_grid_path():
    """The engine renders whole grids through ``query_grid`` (per-pixel layer-0 terms, LR skip on the
    grid): the published outputs at x6 (cell clip 1.5) and x3.4 / x2.8."""
    from engine.render import Dense, QueryPlan
    case = load_golden('lmciaosr_edsr')
    model = golden_model('lmciaosr_edsr')
    assert model.capabilities.grid_queries
    for q in (case['queries'][1], case['queries'][3]):
        plan = QueryPlan.build(model.capabilities, tuple(case['inp'].shape[-2:]), tuple(q['size']))
        with torch.no_grad():
            out, _ = Dense(plan)(model, case['inp'])
        pred = out.permute(0, 2, 3, 1).reshape(1, -1, 3)
        assert (pred - q['pred']).abs().max().item() <= TOL, q['size']


def test_golden_ltefast():
    case = load_golden('ltefast_edsr')
    model = golden_model('ltefast_edsr')
    for q in case['queries']:
        H, W = q['size']
        coord = make_coord((H, W), flatten=False).unsqueeze(0)[:, 1::7, 2::5]     # a sub-grid of queries
        cell = torch.tensor([[2 / H, 2 / W]]) * q['cell_clip']
        with torch.no_grad():
            pred = model(case['inp'], coord, cell)
        assert pred.shape == (1, 3) + tuple(coord.shape[1:3])
        assert (pred - q['pred'][:, :, 1::7, 2::5]).abs().max().item() <= TOL, f"{q['size']}"
    # the grid protocol renders the whole grid, in row bands, with the cell it is given
    q = case['queries'][0]
    H, W = q['size']
    model.band_pixels = 500
    with torch.no_grad():
        full = model.upscale_grid(case['inp'], q['size'], (2 / H * q['cell_clip'], 2 / W * q['cell_clip']))
    assert (full - q['pred']).abs().max().item() <= TOL
    # ... and the engine's plan gives it, clipped per axis: x6 rows, x3 columns -> cell (2/144 * 1.5, 2/60)
    from engine.render import Dense, QueryPlan
    h, w = case['inp'].shape[-2:]
    seen = []
    model.decode_grid = lambda state, coord, cell: seen.append(cell) or coord.new_zeros(1, 3, *coord.shape[1:3])
    with torch.no_grad():
        out, _ = Dense(QueryPlan.build(model.capabilities, (h, w), (6 * h, 3 * w)))(model, case['inp'])
    assert out.shape == (1, 3, 6 * h, 3 * w)
    expect = torch.tensor([[2 / (6 * h) * 1.5, 2 / (3 * w)]])
    assert torch.allclose(torch.cat(seen), expect.expand(len(seen), 2))


# ---------------------------------------------------------------------------------------------------
# parameter counts, state dicts, checkpoints, capabilities
# ---------------------------------------------------------------------------------------------------
def test_parameter_counts_and_tensor_counts():
    """LM-CiaoSR decoder 734,998 and 118 tensors with EDSR-b; CiaoSR with official
    CiaoSR's [256] x 4 MLPs 1,428,614; LTE-fast has LTE's decoder count (493,827)."""
    lm = models.make(load_config(ROOT / 'configs/train-lmf/train_edsr-baseline-lmciaosr.yaml')['model'])
    assert decoder_params(lm) == 734_998
    assert len(lm.state_dict()) == 118
    assert lm.state_dict()['cs_attn.escape_NaN'].item() == pytest.approx(1e-4)
    ciao = models.make(load_config(ROOT / 'configs/train-original/train_edsr-baseline-ciaosr.yaml')['model'])
    assert decoder_params(ciao) == 1_428_614
    fast = models.make(load_config(ROOT / 'configs/train-original/train_edsr-baseline-lte-fast.yaml')['model'])
    assert decoder_params(fast) == 493_827
    # the golden state dicts (official key names) have exactly our keys and shapes
    for name in ('ciaosr_edsr', 'lmciaosr_edsr', 'ltefast_edsr'):
        spec = load_golden(name)['model']
        model = models.make(spec)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in spec['sd'].items()}, name


@pytest.mark.parametrize('name', ['ciaosr_edsr', 'lmciaosr_edsr', 'ltefast_edsr'])
def test_official_checkpoints_load(tmp_path, name):
    """{'model': {name, args, sd}} files load through models.load_model, also with the published scripts'
    injected ``cmsr_spec`` and a DataParallel ``module.`` prefix."""
    case = load_golden(name)
    spec = dict(case['model'])
    spec['args'] = dict(spec['args'], cmsr_spec=None)
    spec['sd'] = {'module.' + k: v for k, v in spec['sd'].items()}
    path = tmp_path / 'official.pth'
    torch.save({'model': spec, 'epoch': 3}, path)
    model = models.load_model(path)
    q = case['queries'][0]
    if name == 'ltefast_edsr':
        H, W = q['size']
        with torch.no_grad():
            pred = model(case['inp'], make_coord((H, W), flatten=False).unsqueeze(0), torch.tensor([[2 / H, 2 / W]]))
        assert (pred - q['pred']).abs().max().item() <= TOL
    else:
        coord, cell = query(q)
        idx = subset(coord.shape[1], 200)
        with torch.no_grad():
            pred = model(case['inp'], coord[:, idx], cell[:, idx])
        assert (pred - q['pred'][:, idx]).abs().max().item() <= TOL


def test_capabilities():
    lm, ciao, fast = golden_model('lmciaosr_edsr'), golden_model('ciaosr_edsr'), golden_model('ltefast_edsr')
    c = lm.capabilities
    assert (c.kind, c.modulated, c.intensity_range, c.cmsr_build_skip, c.name) == \
        ('implicit', True, (0.0, 0.5), False, 'lmciaosr')
    assert c.receptive_radius is None and c.exact_tile_overlap is None   # the non-local attention is global
    c = ciao.capabilities
    assert (c.kind, c.modulated, c.receptive_radius, c.name) == ('implicit', False, None, 'ciaosr')
    c = fast.capabilities
    assert (c.kind, c.integer_scales_only, c.name, c.receptive_radius) == ('grid', False, 'lte-fast', 6)
    # modulation intensity: mean |shift modulation| (the second half of the 256 modulations) per LR pixel
    inp = load_golden('lmciaosr_edsr')['inp']
    with torch.no_grad():
        state = lm.prepare(inp, make_cell((96, 80)).unsqueeze(0))
        m = lm.modulation_intensity(state)
    assert m.shape == (24 * 20,) and lm.mod_dim == 256 and state.mod.shape == (480, 288)
    assert torch.allclose(m, state.mod[:, 128:256].abs().mean(1))


def test_constructor_errors_are_one_line_value_errors():
    spec = load_config(ROOT / 'configs/train-lmf/train_edsr-baseline-lmciaosr.yaml')['model']
    bad = {**spec, 'args': {**spec['args'], 'encoder': {'name': 'edsr-baseline', 'args': {'n_feats': 32}}}}
    with pytest.raises(ValueError, match='hard-codes 64 encoder channels'):
        models.make(bad)
    with pytest.raises(ValueError, match='local_size'):
        models.make({**spec, 'args': {**spec['args'], 'local_size': 3}})
    fast = golden_model('ltefast_edsr')
    inp = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match='coord must be a'):
        fast(inp, make_coord((16, 16)).unsqueeze(0), torch.tensor([[0.1, 0.1]]))
    with pytest.raises(ValueError, match='cell must be one'):
        fast(inp, make_coord((16, 16), flatten=False).unsqueeze(0), make_cell((16, 16)).unsqueeze(0))


# ---------------------------------------------------------------------------------------------------
# non-local attention
# ---------------------------------------------------------------------------------------------------
def test_nonlocal_tiling_rules():
    """h*w <= tile^2: one call. Larger: tile x tile tiles (the last takes the remainder) computed with 1 px
    of context, so each tile's result is the attention of that tile with its context. Thin images
    (h < tile, h*w > tile^2) get all-zero non-local features, as published (docs/deviations.md, B15). (Published tile:
    48; 8 here to keep the test fast.)"""
    torch.manual_seed(0)
    attn = CrossScaleAttention(64).eval()
    with torch.no_grad():
        x = torch.randn(1, 64, 8, 8)
        assert torch.equal(tiled_nonlocal(attn, x, 8), attn(x))
        x = torch.randn(1, 64, 21, 10)                        # tiles rows [0,8) [8,21), cols [0,10)
        out = tiled_nonlocal(attn, x, 8)
        assert torch.allclose(out[:, :, :8], attn(x[:, :, :9])[:, :, :8], atol=1e-6)
        assert torch.allclose(out[:, :, 8:], attn(x[:, :, 7:])[:, :, 1:], atol=1e-6)
        assert not torch.allclose(out, attn(x), atol=1e-3)   # tiling is not exact: attention is global
        thin = torch.randn(1, 64, 6, 30)
        assert torch.count_nonzero(tiled_nonlocal(attn, thin, 8)) == 0


def test_nonlocal_odd_sizes_reflect_pad_and_crop():
    torch.manual_seed(1)
    attn = CrossScaleAttention(64).eval()
    with torch.no_grad():
        x = torch.randn(1, 64, 13, 10)
        y = attn(x)
        padded = attn(torch.nn.functional.pad(x, (0, 0, 0, 1), mode='reflect'))
    assert y.shape == x.shape
    assert torch.equal(y, padded[:, :, :13])


# ---------------------------------------------------------------------------------------------------
# closed-form MACs
# ---------------------------------------------------------------------------------------------------
def _macs(fn):
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            fn()
    return fc.get_total_flops() // 2


@pytest.mark.parametrize('size', [(16, 16), (12, 20)])
def test_nonlocal_macs_match_the_flop_counter(size):
    attn = CrossScaleAttention(64)
    fixed, per_patch = nonlocal_macs_per_pixel(attn)
    h, w = size
    assert _macs(lambda: attn(torch.randn(1, 64, h, w))) == (fixed + per_patch * (h // 2) * (w // 2)) * h * w


@pytest.mark.parametrize('name', ['ciaosr_edsr', 'lmciaosr_edsr', 'ltefast_edsr'])
def test_decoder_macs_match_the_flop_counter(name):
    """decoder_macs() = counted MACs of the whole forward minus the encoder's. The closed form counts the
    non-local attention for a 48x48 tile (L = 576 reference patches); this 16x16 input has L = 64.
    LM-CiaoSR is counted on its training path (plain linear layers; the fast path's in-place products
    are not seen by the counter)."""
    model = golden_model(name)
    h = w = 16
    H, W = 40, 28
    inp = torch.randn(1, 3, h, w)
    enc = _macs(lambda: model.encoder(inp))
    if name == 'ltefast_edsr':
        total = _macs(lambda: model(inp, make_coord((H, W), flatten=False).unsqueeze(0), torch.tensor([[2 / H, 2 / W]])))
    else:
        if name == 'lmciaosr_edsr':
            model.train()
        total = _macs(lambda: model(inp, make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0)))
    per_lr, per_hr = model.decoder_macs()
    extra = 0
    if name == 'ltefast_edsr':       # the phase of the image's one cell (computed once, not per pixel)
        extra = model.phase.in_features * model.phase.out_features
    else:
        per_patch = nonlocal_macs_per_pixel(model.cs_attn)[1]
        per_lr -= per_patch * (576 - (h // 2) * (w // 2))
    assert total - enc - extra == per_lr * h * w + per_hr * H * W


# ---------------------------------------------------------------------------------------------------
# CMSR with LM-CiaoSR
# ---------------------------------------------------------------------------------------------------
def check_cmsr_render(r):
    from engine.render import CMSR, QueryPlan
    g = load_golden('cmsr_lmciaosr_edsr')
    model = golden_model('lmciaosr_edsr')
    inp = g['build_inps'][0]
    assert r['cell_clip'] == max(r['scale'] / 4, 1)
    plan = QueryPlan.build(model.capabilities, tuple(inp.shape[-2:]), tuple(r['size']))
    with torch.no_grad():
        out, stats = CMSR(plan, g['render_table'], False)(model, inp, None)
    pred = out.permute(0, 2, 3, 1).reshape(1, -1, 3)
    assert (pred - r['pred']).abs().max().item() <= TOL, r['scale']
    assert stats.fraction == pytest.approx(r['rendered_fraction'], abs=1e-12)


def test_golden_cmsr_rendering_x8():
    """Renders include the LR skip (levels 1, 2, 4, 6 and 8 of table 8)."""
    check_cmsr_render(load_golden('cmsr_lmciaosr_edsr')['renders'][0])


@pytest.mark.slow
def test_golden_cmsr_rendering_x12():
    """Table 12 has a threshold 1 below its top key (6: 1): the last level (x6) is resampled to x12."""
    check_cmsr_render(load_golden('cmsr_lmciaosr_edsr')['renders'][1])


@pytest.mark.slow
def test_golden_cmsr_table_building():
    """init_cmsr's algorithm for LM-CiaoSR: buckets 0 .. 0.5 (step 0.005), renders without the LR skip."""
    g = load_golden('cmsr_lmciaosr_edsr')
    model = golden_model('lmciaosr_edsr')
    S = g['build_scale']
    table = cmsr.initial_table(S)
    for inp in g['build_inps']:
        cmsr.update_table(model, inp, table, g['mse_threshold'], S, cell_clip=max(S / 4, 1))
    assert table == g['built_table'][S]


# ---------------------------------------------------------------------------------------------------
# -fast dataset wrappers and configs
# ---------------------------------------------------------------------------------------------------
class Images(torch.utils.data.Dataset):
    def __init__(self, imgs):
        self.imgs = imgs

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return self.imgs[i]


def _images(n=2, size=(100, 90)):
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.integers(0, 256, (3, *size), dtype=np.uint8)).float() / 255 for _ in range(n)]


def _pixel(img, coord):
    """HR pixel values at pixel-centre coordinates (N, 2) -> (3, N), by inverting make_coord."""
    H, W = img.shape[-2:]
    iy = torch.round((coord[:, 0] + 1) * H / 2 - 0.5).long()
    ix = torch.round((coord[:, 1] + 1) * W / 2 - 0.5).long()
    return img[:, iy, ix]


def test_fast_wrapper_train_items():
    """48x48 query grids drawn from the HR crop: each gt value is the HR pixel at its coordinate; the LR
    input and the HR crop are those of the non-fast wrapper with the same seed (same random draws)."""
    imgs = _images()
    args = {'inp_size': 16, 'scale_max': 4, 'augment': True}
    fast = datasets.make({'name': 'sr-implicit-downsampled-fast', 'args': args}, args={'dataset': Images(imgs)})
    plain = datasets.make({'name': 'sr-implicit-downsampled', 'args': args}, args={'dataset': Images(imgs)})
    for i in range(2):
        a, b = fast[i], plain[i]          # plain: no sample_q, so every HR pixel of the (flipped) crop
        assert a['inp'].shape == (3, 16, 16) and torch.equal(a['inp'], b['inp'])
        assert a['coord'].shape == (16, 16, 2) and a['gt'].shape == (3, 16, 16) and a['cell'].shape == (2,)
        assert torch.allclose(a['cell'], b['cell'][0])
        H = round(2 / a['cell'][0].item())
        coords = a['coord'].view(-1, 2)
        assert len({tuple(c) for c in coords.tolist()}) == 256                 # drawn without replacement
        hr = b['gt'].t().reshape(3, H, -1)
        assert torch.equal(a['gt'].reshape(3, -1), _pixel(hr, coords))


def test_fast_wrapper_test_items_and_batching():
    imgs = _images(2, (60, 48))
    ds = datasets.make({'name': 'sr-implicit-downsampled-fast', 'args': {'scale_min': 3}},
                       args={'dataset': Images(imgs)})
    item = ds[0]
    assert item['inp'].shape == (3, 20, 16) and item['gt'].shape == (3, 60, 48)
    assert torch.equal(item['coord'], make_coord((60, 48), flatten=False))
    assert torch.equal(item['gt'], imgs[0]) and torch.allclose(item['cell'], torch.tensor([2 / 60, 2 / 48]))
    # paired variant: the whole HR, cropped to s * LR
    pairs = [(imgs[0][:, ::3, ::3].contiguous(), imgs[0])]
    paired = datasets.make({'name': 'sr-implicit-paired-fast', 'args': {}}, args={'dataset': Images(pairs)})
    it = paired[0]
    assert it['coord'].shape == (60, 48, 2) and torch.equal(it['gt'], imgs[0]) and it['cell'].shape == (2,)
    # batches feed the grid model directly: pred and gt have the same (B, 3, H, W) shape; a step trains
    train = datasets.make({'name': 'sr-implicit-downsampled-fast', 'args': {'inp_size': 12, 'scale_max': 4}},
                          args={'dataset': Images(_images(2))})
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=2)))
    model = models.make(load_golden('ltefast_edsr')['model']).train()
    pred = model((batch['inp'] - 0.5) / 0.5, batch['coord'], batch['cell'])
    assert pred.shape == batch['gt'].shape == (2, 3, 12, 12)
    loss = (pred - (batch['gt'] - 0.5) / 0.5).abs().mean()
    loss.backward()
    assert model.layers[0].weight.grad.abs().sum() > 0


def test_fast_wrapper_sample_q_must_be_square():
    ds = datasets.make({'name': 'sr-implicit-downsampled-fast', 'args': {'inp_size': 12, 'sample_q': 150}},
                       args={'dataset': Images(_images(1))})
    with pytest.raises(ValueError, match='perfect square'):
        ds[0]


def test_fast_test_configs_mirror_configs_test():
    """configs/test-fast/X.yaml = configs/test/X.yaml with the -fast wrapper (published test-fast-*)."""
    fast = sorted((ROOT / 'configs/test-fast').glob('*.yaml'))
    assert [p.name for p in fast] == sorted(p.name for p in (ROOT / 'configs/test').glob('*.yaml'))
    for path in fast:
        cfg, ref = load_config(path), load_config(ROOT / 'configs/test' / path.name)
        assert cfg['test_dataset']['wrapper']['name'] == ref['test_dataset']['wrapper']['name'] + '-fast'
        cfg['test_dataset']['wrapper']['name'] = ref['test_dataset']['wrapper']['name']
        assert cfg == ref, path


def test_new_train_configs_build():
    """The LM-CiaoSR configs carry the published hyper-parameters."""
    expect = {'edsr-baseline': (64, 4096, 16, 1e-4, 1200), 'rdn': (64, 4096, 16, 1e-4, 1200),
              'swinir': (48, 2304, 32, 2e-4, 1000)}
    for enc, (inp, q, b, lr, ep) in expect.items():
        cfg = load_config(ROOT / f'configs/train-lmf/train_{enc}-lmciaosr.yaml')
        w = cfg['train_dataset']['wrapper']['args']
        assert (w['inp_size'], w['sample_q'], cfg['train_dataset']['batch_size'], cfg['optimizer']['args']['lr'],
                cfg['epoch_max']) == (inp, q, b, lr, ep)
        assert cfg['model']['args']['encoder']['name'] == enc
        assert models.get_model_class(cfg['model']['name']) is type(golden_model('lmciaosr_edsr'))
    for stem in ('lte-fast', 'ciaosr'):
        for enc in ('edsr-baseline', 'rdn', 'swinir'):
            cfg = load_config(ROOT / f'configs/train-original/train_{enc}-{stem}.yaml')
            assert cfg['model']['name'] == stem
            wrapper = cfg['train_dataset']['wrapper']['name']
            assert wrapper == ('sr-implicit-downsampled-fast' if stem == 'lte-fast' else 'sr-implicit-downsampled')
            datasets.get_dataset_class(wrapper)
    assert math.isclose(load_config(ROOT / 'configs/train-original/train_swinir-lte-fast.yaml')
                        ['optimizer']['args']['lr'], 2e-4)
