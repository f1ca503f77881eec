"""scripts/prepare_data.py against a local HTTP server serving small fake archives (never the internet)."""
import functools
import http.server
import io
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from scripts import prepare_data


def png_bytes(size=8):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buf, format='PNG')
    return buf.getvalue()


def make_archives(folder):
    folder.mkdir()
    for split, first in (('train', 1), ('valid', 801)):
        with zipfile.ZipFile(folder / f'DIV2K_{split}_HR.zip', 'w') as z:
            z.writestr(f'DIV2K_{split}_HR/{first:04d}.png', png_bytes(24))
        for s in (2, 3, 4):
            with zipfile.ZipFile(folder / f'DIV2K_{split}_LR_bicubic_X{s}.zip', 'w') as z:
                z.writestr(f'DIV2K_{split}_LR_bicubic/X{s}/{first:04d}x{s}.png', png_bytes(24 // s))
    with tarfile.open(folder / 'benchmark.tar', 'w') as t:
        for name, data in [('benchmark/Set5/HR/baby.png', png_bytes(24)),
                           ('benchmark/Set5/LR_bicubic/X2/babyx2.png', png_bytes(12))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return folder


@pytest.fixture
def server(tmp_path):
    archives = make_archives(tmp_path / 'www')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archives))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/', archives
    httpd.shutdown()


def test_downloads_and_lays_out_everything(tmp_path, server):
    url, _ = server
    root = tmp_path / 'load'
    assert prepare_data.main(['--root', str(root), '--div2k-url', url, '--benchmark-url', url, '--quiet']) == 0
    for path in ['div2k/DIV2K_train_HR/0001.png', 'div2k/DIV2K_valid_HR/0801.png',
                 'div2k/DIV2K_train_LR_bicubic/X2/0001x2.png', 'div2k/DIV2K_valid_LR_bicubic/X4/0801x4.png',
                 'benchmark/Set5/HR/baby.png', 'benchmark/Set5/LR_bicubic/X2/babyx2.png']:
        assert (root / path).is_file(), path
    assert not list((root / '_downloads').glob('*.part'))
    # a second run finds everything in place and downloads nothing
    assert prepare_data.prepare(str(root), urls={'div2k': url + 'missing/', 'benchmark': url + 'missing/'},
                                quiet=True)


def test_from_dir_and_errors(tmp_path, server, capsys):
    _, archives = server
    root = tmp_path / 'load'
    assert prepare_data.main(['--root', str(root), '--only', 'benchmark', '--from-dir', str(archives)]) == 0
    assert (root / 'benchmark/Set5/HR/baby.png').is_file()
    assert prepare_data.main(['--root', str(tmp_path / 'x'), '--only', 'benchmark',
                              '--benchmark-url', 'http://127.0.0.1:9/', '--quiet']) == 1
    assert 'cannot download' in capsys.readouterr().err


def test_archive_escaping_its_folder_is_refused(tmp_path):
    bad = tmp_path / 'benchmark.tar'
    with tarfile.open(bad, 'w') as t:
        info = tarfile.TarInfo('../../evil.txt')
        info.size = 1
        t.addfile(info, io.BytesIO(b'x'))
    dest = tmp_path / 'dest'
    dest.mkdir()
    with pytest.raises(prepare_data.PrepareError, match='outside'):
        prepare_data.extract(str(bad), str(dest))
    assert not (tmp_path / 'evil.txt').exists()


def _tar(path, members):
    """Write a tar file from (TarInfo kwargs, data or None) pairs."""
    with tarfile.open(path, 'w') as t:
        for kw, data in members:
            info = tarfile.TarInfo(kw.pop('name'))
            for k, v in kw.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                t.addfile(info)
    return path


def test_symlink_chain_beyond_path_max_cannot_escape(tmp_path):
    """The PATH_MAX symlink-chain construction (links that resolve past PATH_MAX, where realpath stops
    resolving and the tarfile 'data' filter is fooled), then a link through the chain to '..' and a file
    written through it: refused, nothing written outside, no link left anywhere."""
    comp = 'd' * 247
    steps = 'abcdefghijklmnop'
    members, path = [], ''
    for i in steps:
        members.append(({'name': f'{path}{comp}', 'type': tarfile.DIRTYPE}, None))
        members.append(({'name': f'{path}{i}', 'type': tarfile.SYMTYPE, 'linkname': comp}, None))
        path += f'{i}/'
    link = '/'.join(steps) + '/' + 'l' * 254
    members.append(({'name': link, 'type': tarfile.SYMTYPE, 'linkname': '../' * len(steps)}, None))
    members.append(({'name': 'escape', 'type': tarfile.SYMTYPE, 'linkname': link + '/../../..'}, None))
    members.append(({'name': 'escape/outside.txt'}, b'pwned'))
    bad = _tar(tmp_path / 'benchmark.tar', members)
    dest = tmp_path / 'root' / 'dest'
    dest.mkdir(parents=True)
    with pytest.raises(prepare_data.PrepareError):
        prepare_data.extract(str(bad), str(dest))
    assert not (tmp_path / 'root' / 'outside.txt').exists() and not (tmp_path / 'outside.txt').exists()
    assert not any(p.is_symlink() for p in tmp_path.rglob('*'))
    assert list(dest.iterdir()) == []


def test_links_inside_the_archive_become_copies(tmp_path):
    data = b'\x89PNG fake'
    ok = _tar(tmp_path / 'ok.tar', [
        ({'name': 'benchmark/Set5/HR', 'type': tarfile.DIRTYPE}, None),
        ({'name': 'benchmark/Set5/HR/baby.png'}, data),
        ({'name': 'benchmark/Set5/HR/alias.png', 'type': tarfile.SYMTYPE, 'linkname': 'baby.png'}, None),
        ({'name': 'benchmark/Set5/HR/hard.png', 'type': tarfile.LNKTYPE,
          'linkname': 'benchmark/Set5/HR/baby.png'}, None)])
    dest = tmp_path / 'dest'
    dest.mkdir()
    prepare_data.extract(str(ok), str(dest))
    hr = dest / 'benchmark/Set5/HR'
    for name in ('baby.png', 'alias.png', 'hard.png'):
        assert (hr / name).read_bytes() == data and not (hr / name).is_symlink()


@pytest.mark.parametrize('kind', ['fifo', 'dangling', 'absolute', 'dup'])
def test_refused_members_leave_nothing(tmp_path, kind):
    members = {
        'fifo': [({'name': 'p', 'type': tarfile.FIFOTYPE}, None)],
        'dangling': [({'name': 'a', 'type': tarfile.SYMTYPE, 'linkname': 'missing'}, None)],
        'absolute': [({'name': 'a', 'type': tarfile.SYMTYPE, 'linkname': '/etc/passwd'}, None)],
        'dup': [({'name': 'x.png'}, b'1'), ({'name': 'x.png'}, b'2')],
    }[kind]
    bad = _tar(tmp_path / 'bad.tar', [({'name': 'ok.png'}, b'fine')] + members)
    dest = tmp_path / 'dest'
    dest.mkdir()
    with pytest.raises(prepare_data.PrepareError):
        prepare_data.extract(str(bad), str(dest))
    assert list(dest.iterdir()) == []


def test_zip_symlink_member_is_refused(tmp_path):
    import stat
    import zipfile
    bad = tmp_path / 'x.zip'
    with zipfile.ZipFile(bad, 'w') as z:
        info = zipfile.ZipInfo('link')
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, '../../etc')
    dest = tmp_path / 'dest'
    dest.mkdir()
    with pytest.raises(prepare_data.PrepareError, match='link'):
        prepare_data.extract(str(bad), str(dest))
    assert list(dest.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# --make-lr: MATLAB-bicubic LR folders from HR-only test sets
# ------------------------------------------------------------------------------------------------
def _shipped(name):
    from pathlib import Path

    from .conftest import DATA
    root = Path(DATA) / 'benchmark' / name
    if not (root / 'HR').is_dir():
        pytest.skip(f'{name} HR images not found at {root / "HR"} (set ASSR_SHARED)')
    return root


def _hr_copy(src, dst):
    (dst / 'HR').mkdir(parents=True)
    for f in sorted((src / 'HR').iterdir()):
        (dst / 'HR' / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize('name', ['Set5', 'Set14'])
def test_make_lr_reproduces_the_published_lr_files(tmp_path, capsys, name):
    """Regenerated LR_bicubic/X{2,3,4,8} equal the shipped files pixel for pixel (skipped for a set shipped
    without LR files, e.g. Set14 in ../shared)."""
    from utils.image import load_array
    src = _shipped(name)
    if not (src / 'LR_bicubic').is_dir():
        pytest.skip(f'{name}: no published LR files at {src / "LR_bicubic"} to compare with')
    root = _hr_copy(src, tmp_path / name)
    scales = [2, 3, 4, 8]
    assert prepare_data.main(['--make-lr', str(root), '--scales', ','.join(map(str, scales)), '--quiet']) == 0, \
        capsys.readouterr().err
    compared = 0
    for s in scales:
        made = sorted(p.name for p in (root / 'LR_bicubic' / f'X{s}').iterdir())
        assert made == sorted(f'{p.stem}x{s}.png' for p in (root / 'HR').iterdir())
        shipped = src / 'LR_bicubic' / f'X{s}'
        for f in made:
            if (shipped / f).is_file():
                ours, theirs = load_array(root / 'LR_bicubic' / f'X{s}' / f)[0], load_array(shipped / f)[0]
                assert ours.shape == theirs.shape and np.array_equal(ours, theirs), f'{name} {f}'
                compared += 1
    assert compared >= 5 * len(scales) or name != 'Set5'
    assert not list(root.glob('LR_bicubic/.*'))          # no temporary folders left


def test_make_lr_crops_sizes_not_divisible_by_the_scale(tmp_path, capsys):
    """HR 25x23: cropped top-left to a multiple of s (the published modcrop), then MATLAB bicubic 1/s;
    checked against imresize on the explicitly cropped HR. Gray images stay gray; the output is what the
    test configs' paired folders read."""
    import torch

    import datasets
    from utils.image import load_array
    from utils.imresize import imresize
    rng = np.random.default_rng(0)
    (tmp_path / 'S' / 'HR').mkdir(parents=True)
    colour = rng.integers(0, 256, (25, 23, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / 'S' / 'HR' / 'c.png')
    Image.fromarray(colour[..., 0]).save(tmp_path / 'S' / 'HR' / 'g.bmp')
    assert prepare_data.main(['--make-lr', str(tmp_path / 'S'), '--scales', '2,3,4', '--quiet']) == 0, \
        capsys.readouterr().err
    for s in (2, 3, 4):
        h, w = 25 // s, 23 // s
        crop = torch.from_numpy(colour[:h * s, :w * s].copy()).permute(2, 0, 1)
        expected = imresize(crop, scale=1 / s).permute(1, 2, 0).numpy()
        got = load_array(tmp_path / 'S' / 'LR_bicubic' / f'X{s}' / f'cx{s}.png')[0]
        assert got.shape == (h, w, 3) and np.array_equal(got, expected)
        gray = load_array(tmp_path / 'S' / 'LR_bicubic' / f'X{s}' / f'gx{s}.png')[0]
        assert gray.shape == (h, w)
        ds = datasets.make({'name': 'paired-image-folders',
                            'args': {'root_path_1': str(tmp_path / 'S' / 'LR_bicubic' / f'X{s}'),
                                     'root_path_2': str(tmp_path / 'S' / 'HR')}})
        assert len(ds) == 2


def test_make_lr_refuses_existing_folders_and_leaves_nothing_on_failure(tmp_path, capsys):
    root = tmp_path / 'S'
    (root / 'HR').mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / 'HR' / 'a.png')
    assert prepare_data.main(['--make-lr', str(root), '--scales', '2', '--quiet']) == 0
    before = (root / 'LR_bicubic' / 'X2' / 'ax2.png').read_bytes()
    assert prepare_data.main(['--make-lr', str(root), '--scales', '2,3', '--quiet']) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('prepare_data.py: error: ') and 'X2 already exists' in err and '--overwrite' in err
    assert sorted(p.name for p in (root / 'LR_bicubic').iterdir()) == ['X2']        # X3 not written either
    # a corrupt HR image: one line naming it, no LR_bicubic/X3 or temporary folder left, X2 intact
    (root / 'HR' / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\nbroken')
    assert prepare_data.main(['--make-lr', str(root), '--scales', '2,3', '--quiet', '--overwrite']) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'b.png' in err
    assert sorted(p.name for p in (root / 'LR_bicubic').iterdir()) == ['X2']
    assert (root / 'LR_bicubic' / 'X2' / 'ax2.png').read_bytes() == before
    (root / 'HR' / 'b.png').unlink()
    assert prepare_data.main(['--make-lr', str(root), '--scales', '2,3', '--quiet', '--overwrite']) == 0
    for bad, words in [(['--scales', '1'], '--scales'), (['--scales', 'x'], '--scales')]:
        assert prepare_data.main(['--make-lr', str(root), *bad, '--overwrite', '--quiet']) == 1
        assert words in capsys.readouterr().err
    assert prepare_data.main(['--make-lr', str(tmp_path / 'nothing'), '--quiet']) == 1
    assert 'no HR folder' in capsys.readouterr().err
