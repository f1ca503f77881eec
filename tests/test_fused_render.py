"""The fused LM render kernel (``models/decoders/fused_render.{c,py}``): equal to the unfused grid path ('mm') on
every model variant it accepts (ensemble on/off, scale/shift modulation off, depth, cell, LM-LTE with and without
the cell phase, large Fourier phases, batches, fractional and large scales, thread splits); refused with the
reason where it does not apply; a failed build leaves nothing behind and 'auto' then renders exactly like 'mm'.
(tests/test_render_kernels.py checks it, with every product kernel, against an independent float64 render.)"""
import os

import pytest
import torch

import demo
import models
from engine.inference import BUNDLED_DIR, Session, Upscaler
from models.decoders import fused_render

from .test_hostile_inputs import run_demo, world  # noqa: F401  (world: a fixture)

ENCODER = {'name': 'edsr-baseline', 'args': {'no_upsampling': True, 'n_resblocks': 1, 'n_feats': 16}}


def lmliif(depth=4, mod_scale=True, mod_shift=True, local_ensemble=True, cell_decode=True, mod_input=True, hd=16):
    return {'name': 'lmliif', 'args': {
        'encoder_spec': ENCODER, 'local_ensemble': local_ensemble, 'cell_decode': cell_decode, 'mod_input': mod_input,
        'imnet_spec': {'name': 'lmmlp', 'args': {'out_dim': 3, 'hidden_dim': hd, 'hidden_depth': depth,
                                                 'mod_scale': mod_scale, 'mod_shift': mod_shift}},
        'hypernet_spec': {'name': 'mlp', 'args': {'out_dim': 1, 'hidden_list': [32]}}}}


def lmlte(cell_decode=True, mod_input=True, depth=5):
    return {'name': 'lmlte', 'args': {
        'encoder_spec': ENCODER, 'hidden_dim': 32, 'cell_decode': cell_decode, 'mod_input': mod_input,
        'imnet_spec': {'name': 'lmmlp', 'args': {'out_dim': 3, 'hidden_dim': 16, 'hidden_depth': depth}},
        'hypernet_spec': {'name': 'mlp', 'args': {'out_dim': 1, 'hidden_list': [32]}}}}


def build(spec, seed=0):
    torch.manual_seed(seed)
    model = models.make(spec).eval()
    with torch.no_grad():          # modulations of a useful size (default init keeps them near 0)
        for p in model.hypernet.parameters():
            p.mul_(3)
    return model


def render(model, inp, size, kernel, threads=None):
    model.set_render_mode(kernel=kernel)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            return Upscaler(model)(inp, size)
    finally:
        torch.set_num_threads(before)


VARIANTS = {
    'lmliif': lmliif(),
    'lmliif-no-ensemble': lmliif(local_ensemble=False),
    'lmliif-scale-only': lmliif(mod_shift=False),
    'lmliif-shift-only': lmliif(mod_scale=False),
    'lmliif-depth1': lmliif(depth=1),
    'lmliif-no-cell-no-mod-input': lmliif(cell_decode=False, mod_input=False),
    'lmlte': lmlte(),
    'lmlte-no-cell': lmlte(cell_decode=False),
}


def test_the_kernel_builds_here():
    ok, why = fused_render.status()
    assert ok, why


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('lr, size, threads', [((9, 11), (29, 34), 2), ((7, 5), (91, 66), 3), ((6, 8), (6, 8), 1)])
def test_fused_equals_the_unfused_grid_path(name, lr, size, threads):
    model = build(VARIANTS[name])
    assert model.fused_unsupported() is None
    inp = torch.rand(2, 3, *lr, generator=torch.Generator().manual_seed(1))
    ref = render(model, inp, size, 'mm')
    got = render(model, inp, size, 'fused', threads)
    assert model.uses_fused('cpu')
    assert got.shape == ref.shape == (2, 3, *size)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max().item() <= 1e-6
    assert (ref - ref.mean()).abs().max().item() > 1e-3          # not a constant image


def test_large_fourier_phases():
    """LM-LTE's layer 0 reads cos / sin of pi g with g up to hundreds: the kernel's range reduction keeps the
    output within float rounding of torch's cos / sin."""
    model = build(lmlte())
    with torch.no_grad():
        model.hypernet.layers[-1].weight.mul_(50)       # the frequency map F is part of the hypernet's output
    inp = torch.rand(1, 3, 8, 9, generator=torch.Generator().manual_seed(2))
    state = model.prepare(inp * 2 - 1, torch.full((1, 1, 2), 0.1))
    assert state.basis[:, 16:].abs().max().item() > 50
    ref = render(model, inp, (37, 41), 'mm')
    got = render(model, inp, (37, 41), 'fused')
    assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_auto_takes_the_fused_kernel_where_it_applies():
    model = build(lmliif())
    assert model.render_kernel == 'auto' and model.uses_fused('cpu')      # a model's default
    assert model.set_render_mode(kernel='auto').uses_fused('cpu')
    assert not model.set_render_mode(kernel='mm').uses_fused('cpu')
    assert not model.set_render_mode('bfloat16', kernel='auto').uses_fused('cpu')      # float32 only
    assert not build(lmliif(hd=8)).set_render_mode(kernel='auto').uses_fused('cpu')     # width 16 only


@pytest.mark.parametrize('spec, precision, words', [
    (lmliif(), 'bfloat16', 'float32 only'),
    (lmliif(hd=8), 'float32', 'render width 16'),
    (lmlte(mod_input=False), 'float32', 'mod_input'),
])
def test_fused_is_refused_where_it_does_not_apply(spec, precision, words):
    model = build(spec).set_render_mode(kernel='linear')
    with pytest.raises(ValueError, match=words):
        model.set_render_mode(precision, kernel='fused')
    assert model.render_kernel == 'linear' and model.render_dtype == torch.float32     # left as it was


def test_a_failed_build_leaves_nothing_and_auto_renders_like_mm(tmp_path, monkeypatch, capsys):
    cache = tmp_path / 'cache'
    failing = tmp_path / 'cc'
    failing.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "fakecc 1.0"; exit 0; }\n'
                       'echo "fused_render.c:1: error: no such compiler feature" >&2\nexit 1\n')
    failing.chmod(0o755)
    model = build(lmliif())
    inp = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(3))
    ref = render(model, inp, (17, 20), 'mm')
    try:
        for cc, words in ((str(failing), 'failed to build'), (str(tmp_path / 'missing-cc'), 'no C compiler')):
            monkeypatch.setenv('CC', cc)
            monkeypatch.setenv('ASSR_KERNEL_CACHE', str(cache))
            fused_render._load.cache_clear()
            ok, why = fused_render.status()
            assert not ok and words in why
            assert not cache.exists() or not any(cache.iterdir())        # no partial library
            with pytest.raises(ValueError, match=words):
                model.set_render_mode(kernel='fused')
            got = render(model, inp, (17, 20), 'auto')
            assert not model.uses_fused('cpu') and torch.equal(got, ref)
            capsys.readouterr()
            Session(model, 'cpu', script='demo.py')          # a session says so, in one note line
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and 'demo.py: note: the fused render kernel is unavailable' in err[0] and words in err[0]
    finally:
        monkeypatch.undo()
        fused_render._load.cache_clear()


def test_the_library_is_built_once_per_machine_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv('ASSR_KERNEL_CACHE', str(tmp_path))
    try:
        fused_render._load.cache_clear()
        assert fused_render.status()[0]
        built = list(tmp_path.iterdir())
        assert len(built) == 1 and built[0].name.startswith('fused_render-') and built[0].suffix == '.so'
        stamp = built[0].stat().st_mtime_ns
        fused_render._load.cache_clear()
        assert fused_render.status()[0]
        assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp
        assert fused_render._library_path(fused_render._compiler()) == built[0]
    finally:
        monkeypatch.undo()
        fused_render._load.cache_clear()


BUNDLED = os.path.join(BUNDLED_DIR, 'edsr-b_lm-liif.pth')


@pytest.mark.parametrize('extra, words', [
    (['--render-kernel', 'fused', '--render-mode', 'bf16'], ['fused', 'float32 only']),
    (['--render-kernel', 'fused', '--scale', '3', '--model', 'bicubic'], ['--render-kernel fused', 'LM model']),
])
def test_demo_refuses_the_fused_kernel_where_it_does_not_apply(world, capsys, extra, words):  # noqa: F811
    run_demo(world, capsys, ['--scale', '2', '--model', BUNDLED, *extra], *words)


def test_demo_default_kernel_is_the_fused_one(tmp_path):
    from PIL import Image
    import numpy as np
    img = tmp_path / 'in.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(img)
    outs = {}
    for kernel in ('auto', 'mm'):
        out = tmp_path / f'{kernel}.png'
        assert demo.main(['--input', str(img), '--output', str(out), '--model', BUNDLED, '--scale', '3',
                          '--device', 'cpu', '--quiet', '--render-kernel', kernel]) == 0
        outs[kernel] = np.asarray(Image.open(out)).astype(int)
    # 8-bit images of the two kernels: equal except where the ~1e-7 difference crosses a rounding boundary
    assert np.abs(outs['auto'] - outs['mm']).max() <= 1


def band_args(pix_value=0, row_value=0):
    """A tiny mode-0 band (4 neighbours, 1 group of 1 row, 2 columns, depth 2) over tables of 5 pixels."""
    g = torch.Generator().manual_seed(4)
    P, W = 5, fused_render.WIDTH
    out = torch.zeros(3, 2, 2)
    tables = dict(l0tab=torch.randn(P, W, generator=g), wx=torch.randn(W, generator=g), wy=torch.randn(W, generator=g),
                  s0=torch.rand(P, W, generator=g), t0=torch.randn(P, W, generator=g))
    scale = [None, torch.rand(P, W, generator=g)]
    shift = [None, torch.randn(P, W, generator=g)]
    pix = torch.full((4, 1, 2), pix_value, dtype=torch.int64)
    wout = torch.zeros(4, W)
    wout[:3] = torch.randn(3, W, generator=g)
    return (out, 4, torch.tensor([row_value]), pix, torch.rand(4, 1, 1, generator=g), torch.rand(4, 2, generator=g), 2,
            scale, shift, torch.randn(1, W, W, generator=g), wout, torch.randn(3, generator=g)), tables


@pytest.mark.parametrize('pix_value, row_value', [(5, 0), (-1, 0), (0, 2), (0, -1)])
def test_indices_outside_the_tables_are_refused_not_read(pix_value, row_value):
    args, tables = band_args(pix_value, row_value)
    with pytest.raises(ValueError, match='outside its table'):
        fused_render.render(*args, **tables)
    assert not args[0].any()                 # nothing written


def test_arguments_the_kernel_cannot_read_are_refused():
    args, tables = band_args()
    fused_render.render(*args, **tables)
    assert args[0].abs().sum() > 0           # the valid band renders
    for bad in (dict(tables, l0tab=tables['l0tab'][:, :8]), dict(tables, wx=tables['wx'].double()),
                dict(tables, s0=tables['s0'].t().contiguous().t())):
        with pytest.raises(ValueError, match='fused render'):
            fused_render.render(*args, **bad)
    with pytest.raises(ValueError, match='fused render'):            # scale / shift lists shorter than the depth
        fused_render.render(*args[:7], args[7][:1], args[8][:1], *args[9:], **tables)
