"""Hostile inputs, round 3 (issue 24), by cause: malformed checkpoint content, resume assumptions, content
bombs (YAML aliases, nesting), absurd sizes, special files. Same contract as ``test_hostile_inputs.py``
(whose fixtures and ``refused`` checker are reused): exit 1, one line naming the problem, no traceback,
nothing created, changed or removed."""
import json
import os
import signal
import struct
import time
import zipfile

import pytest
import torch

import demo
import models
import train as train_script
from models.checkpoint import CheckpointError, load_checkpoint
from utils.config import ConfigError, load_yaml
from utils.untrusted import ContentError, check_tree, excerpt, json_depth

from .test_hostile_inputs import checkpoint, refused, run_demo, run_test, run_train, world  # noqa: F401,F811


@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) if a case blocks for more than 60 s."""
    def on_alarm(*_):
        raise TimeoutError('the command blocked')
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------
# cause 1: malformed checkpoint content
# ------------------------------------------------------------------------------------------------
def safetensors_with_metadata(path, meta):
    header = json.dumps({'__metadata__': meta}).encode()
    path.write_bytes(struct.pack('<Q', len(header)) + header)
    return path


def test_safetensors_metadata_nested_100000_deep(world, capsys):
    deep = '[' * 100_000 + ']' * 100_000
    bad = safetensors_with_metadata(world['root'] / 'deep.safetensors',
                                    {'assr.format': '1', 'assr.model.name': 'lmliif', 'assr.model.args': deep})
    try:
        with pytest.raises(CheckpointError, match='nested more than'):
            load_checkpoint(bad)
        run_demo(world, capsys, ['--scale', '2', '--model', bad], 'deep.safetensors', 'nested')
    finally:
        bad.unlink()


def tampered(world, name, edit):
    """The tiny checkpoint with its data.pkl rewritten by ``edit(bytes) -> bytes``."""
    src, dst = world['good'], world['root'] / name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith('data.pkl'):
                data = edit(data)
            zout.writestr(item, data)
    return dst


@pytest.mark.parametrize('edit,what', [
    (lambda b: b.replace(b'X\x01\x00\x00\x000', b'X\x01\x00\x00\x009', 1), 'missing storage record'),
    (lambda b: b[:len(b) // 2], 'truncated pickle'),
    (lambda b: b.replace(b'FloatStorage', b'DoubleStorage', 1), 'storage of the wrong size'),
])
def test_tampered_data_pkl(world, capsys, edit, what):
    bad = tampered(world, 'tampered.pth', edit)
    try:
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)
        run_demo(world, capsys, ['--scale', '2', '--model', bad], 'tampered.pth')
    finally:
        bad.unlink()


def test_deeply_nested_args_are_refused_without_recursion(world, capsys):
    nested = 0
    for _ in range(200):
        nested = [nested]
    bad = checkpoint(world, 'nested.pth', args={**world['spec']['args'], 'extra': nested})
    try:
        with pytest.raises(CheckpointError, match='nested more than'):
            load_checkpoint(bad)
        run_demo(world, capsys, ['--scale', '2', '--model', bad], 'nested.pth', 'nested')
    finally:
        bad.unlink()


def test_lm_model_with_a_plain_mlp_render_spec(world, capsys, tmp_path):
    args = dict(world['spec']['args'], imnet_spec={'name': 'mlp', 'args': {'out_dim': 3, 'hidden_list': [16]}})
    bad = checkpoint(world, 'plainmlp.pth', args=args)
    try:
        run_demo(world, capsys, ['--scale', '2', '--model', bad], 'plainmlp.pth', 'lmmlp')
    finally:
        bad.unlink()
    import yaml
    cfg = yaml.safe_load(world['train_cfg'].read_text())
    cfg['model']['args']['imnet_spec'] = {'name': 'mlp', 'args': {'out_dim': 3, 'hidden_list': [16]}}
    path = tmp_path / 'plainmlp.yaml'
    path.write_text(yaml.safe_dump(cfg))
    run_train(world, capsys, path, [], 'imnet_spec', 'lmmlp', tmp_path=tmp_path)


def test_constructor_failures_are_named():
    """Whatever a constructor trips over (KeyError, IndexError, ...) becomes one error naming it."""
    from utils.registry import Registry
    reg = Registry('thing', ValueError)

    @reg.register('fragile')
    class Fragile:
        def __init__(self, table=None):
            self.width = table['width']

    with pytest.raises(ValueError, match="thing 'fragile' cannot be built.*KeyError: 'width'"):
        reg.build({'name': 'fragile', 'args': {'table': {}}})


# ------------------------------------------------------------------------------------------------
# cause 4: YAML alias bombs and messages that never expand user data
# ------------------------------------------------------------------------------------------------
BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
"""


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    path = tmp_path / 'bomb.yaml'
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match='expanded'):
        load_yaml(str(path))
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize('where', ['train', 'test', 'cmsr'])
def test_alias_bomb_in_every_script(world, capsys, tmp_path, where):
    text = BOMB.replace('h: &h', 'bomb: &h')
    start = time.perf_counter()
    if where == 'train':
        cfg = tmp_path / 'train.yaml'
        cfg.write_text(world['train_cfg'].read_text() + text.replace('a: &a', 'extra_a: &a'))
        run_train(world, capsys, cfg, [], 'expanded', tmp_path=tmp_path)
    elif where == 'test':
        cfg = tmp_path / 'test.yaml'
        cfg.write_text(text + world['cfg'].read_text().replace('eval_type: benchmark-2', 'eval_type: *h'))
        run_test(world, capsys, cfg, (), 'expanded', watch_more=(tmp_path,))
    else:
        table = tmp_path / 'table.yaml'
        table.write_text(text + "0: *h\n")
        run_demo(world, capsys, ['--scale', '8', '--cmsr', table], 'expanded', watch_more=(tmp_path,))
    assert time.perf_counter() - start < 30


def test_check_tree_bounds():
    shared = ['x'] * 1000
    with pytest.raises(ContentError, match='expanded'):
        check_tree([shared] * 2000, 'v')                # 2 M values once expanded, 2 objects in memory
    deep = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ContentError, match='nested'):
        check_tree(deep, 'v')
    with pytest.raises(ContentError, match='type'):
        check_tree({'a': object()}, 'v')
    assert check_tree({'a': [1, 2.5, 'x', None, True]}, 'v') == {'a': [1, 2.5, 'x', None, True]}
    assert json_depth('{"a": "[[[[", "b": [[1]]}') == 3
    assert len(excerpt([shared] * 10 ** 6)) <= 80


# ------------------------------------------------------------------------------------------------
# cause 11: special files never block
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('flag', ['--model', '--input', '--cmsr'])
def test_fifo_arguments_do_not_hang(world, capsys, tmp_path, flag, deadline):
    fifo = tmp_path / 'pipe'          # (not in a watched folder: the snapshot would read it)
    os.mkfifo(fifo)
    run_demo(world, capsys, ['--scale', '2', flag, fifo], 'pipe', 'regular file')


def test_fifo_config_does_not_hang(world, capsys, tmp_path, deadline):
    fifo = tmp_path / 'pipe.yaml'
    os.mkfifo(fifo)
    run_test(world, capsys, fifo, (), 'pipe.yaml', 'regular file')
    refused(capsys, train_script.main, ['--config', fifo, '--save-root', tmp_path / 'runs', '--device', 'cpu'],
            'pipe.yaml', 'regular file', script='train.py')
    assert not (tmp_path / 'runs').exists()


# ------------------------------------------------------------------------------------------------
# cause 6: padding inputs smaller than the pad
# ------------------------------------------------------------------------------------------------
def test_mirror_pad_equals_the_library_pads_and_extends_them():
    from models.layers.padding import mirror_pad
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    for ph, pw in [(0, 0), (1, 2), (4, 6)]:           # pads the library accepts (< size)
        ref = torch.nn.functional.pad(x, (0, pw, 0, ph), mode='reflect')
        assert torch.equal(mirror_pad(x, ph, pw, 'reflect'), ref)
        sym = torch.cat([x, x.flip(2)], 2)[:, :, :5 + ph]
        sym = torch.cat([sym, sym.flip(3)], 3)[..., :7 + pw]
        assert torch.equal(mirror_pad(x, ph, pw, 'symmetric'), sym)
    big = mirror_pad(x, 20, 30, 'reflect')            # larger than the input: periodic reflection
    assert big.shape[-2:] == (25, 37)
    assert torch.equal(big[..., 8, :7], x[..., 0, :]) and torch.equal(big[..., 4, :7], x[..., 4, :])
    assert torch.equal(mirror_pad(x[..., :1, :1], 3, 3), x[..., :1, :1].expand(2, 3, 4, 4))


def test_window_larger_than_the_image(world, tmp_path):
    """--window 64 on a 16x20 image, and a SwinIR-window model on a 3x3 image: rendered, not a crash."""
    out = tmp_path / 'o.png'
    assert demo.main(['--input', str(world['img']), '--output', str(out), '--model', str(world['good']),
                      '--scale', '2', '--window', '64', '--device', 'cpu', '--quiet']) == 0
    from PIL import Image
    assert Image.open(out).size == (40, 32)
    tiny = models.make({'name': 'SwinIRMS', 'args': {'img_size': 16, 'window_size': 8, 'embed_dim': 12,
                                                       'depths': [2], 'num_heads': [2], 'mlp_ratio': 2,
                                                       'implicit_dim': 16, 'latent_layers': 2}}).eval()
    with torch.no_grad():
        y = tiny(torch.rand(1, 3, 3, 3), 2)
    assert y.shape == (1, 3, 6, 6) and torch.isfinite(y).all()


# ------------------------------------------------------------------------------------------------
# cause 10: a valid 16-bit PNG with an EXIF rotation
# ------------------------------------------------------------------------------------------------
def png16_with_orientation(path, arr, orientation):
    """A 16-bit RGB PNG (our encoder) with an eXIf chunk carrying the orientation, before IDAT."""
    import zlib
    from PIL import Image
    from utils.image import _png16
    data = _png16(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    chunk = struct.pack('>I', len(payload)) + b'eXIf' + payload + \
        struct.pack('>I', zlib.crc32(b'eXIf' + payload) & 0xFFFFFFFF)
    cut = 8 + 25                      # signature + IHDR chunk
    path.write_bytes(data[:cut] + chunk + data[cut:])
    return path


@pytest.mark.parametrize('orientation', [3, 6, 8])
def test_16bit_png_with_exif_rotation(world, tmp_path, orientation):
    import numpy as np
    from PIL import Image
    from utils.image import load_array, read_size
    arr = np.random.default_rng(0).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    path = png16_with_orientation(tmp_path / 'rot16.png', arr, orientation)
    loaded, info = load_array(path)
    expect = {3: arr[::-1, ::-1], 6: np.rot90(arr, -1), 8: np.rot90(arr, 1)}[orientation]
    assert info.bit_depth == 16 and np.array_equal(loaded, expect)
    assert read_size(path) == loaded.shape[:2]
    out = tmp_path / 'out.png'
    assert demo.main(['--input', str(path), '--output', str(out), '--model', str(world['good']), '--scale', '2',
                      '--device', 'cpu', '--quiet']) == 0
    assert Image.open(out).size == (2 * loaded.shape[1], 2 * loaded.shape[0])


# ------------------------------------------------------------------------------------------------
# causes 3 and 5: absurd model sizes in configs and checkpoints are refused before allocating
# ------------------------------------------------------------------------------------------------
def test_checkpoint_declaring_a_huge_model_is_refused_before_building(world, capsys):
    import resource
    args = dict(world['spec']['args'])
    args['encoder_spec'] = {'name': 'edsr-baseline', 'args': {'n_feats': 2048, 'n_resblocks': 2000,
                                                               'no_upsampling': True}}
    bad = checkpoint(world, 'huge.pth', args=args)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_demo(world, capsys, ['--scale', '2', '--model', bad], 'huge.pth', 'weight elements')
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mb < 500, f'peak memory grew by {grown_mb:.0f} MB'
    finally:
        bad.unlink()


def test_training_config_with_60000_features_is_refused(world, capsys, tmp_path):
    import yaml
    cfg = yaml.safe_load(world['train_cfg'].read_text())
    cfg['model']['args']['encoder_spec'] = {'name': 'edsr-baseline',
                                            'args': {'n_feats': 60000, 'no_upsampling': True}}
    path = tmp_path / 'wide.yaml'
    path.write_text(yaml.safe_dump(cfg))
    run_train(world, capsys, path, [], 'GiB', 'free memory', tmp_path=tmp_path)


def test_size_check_is_exact_and_cheap_for_ordinary_models():
    from models.budget import check_spec_size, crude_element_bound, tensor_count
    spec = {'name': 'edsr-baseline', 'args': {'n_resblocks': 16, 'n_feats': 64, 'no_upsampling': True}}
    assert tensor_count(spec) == sum(p.numel() for p in models.make(spec).parameters())
    assert crude_element_bound(spec['args']) >= tensor_count(spec)
    assert check_spec_size(spec, 'x') is None              # far below the memory: no meta build at all
