"""Download and lay out DIV2K and the SR benchmarks under load/ (the paths every config uses).

    python scripts/prepare_data.py                      # everything: DIV2K (HR + bicubic LR x2-x4) + benchmarks
    python scripts/prepare_data.py --only benchmark     # Set5, Set14, B100, Urban100 (HR + LR_bicubic/X2-X4)
    python scripts/prepare_data.py --from-dir ~/archives  # use archives you already downloaded

Layout produced (what configs/ expect):

    load/div2k/DIV2K_train_HR/0001.png ...            load/div2k/DIV2K_valid_HR/0801.png ...
    load/div2k/DIV2K_train_LR_bicubic/X2/0001x2.png   load/div2k/DIV2K_valid_LR_bicubic/X4/0801x4.png
    load/benchmark/Set5/HR/baby.png                   load/benchmark/Set5/LR_bicubic/X2/babyx2.png

Manga109 is not redistributed in the benchmark archive; request it from its authors and place it as
load/benchmark/Manga109/HR, then make its LR files with --make-lr.

Test sets that come as HR images only (the usual download) get their MATLAB-bicubic LR folders with

    python -m scripts.prepare_data --make-lr load/benchmark/Manga109 --scales 2,3,4

which writes ROOT/LR_bicubic/X{s}/<name>x{s}.png (the published layout, what configs/test/*.yaml read) from
ROOT/HR/<name>.*: each HR image is cropped top-left to a multiple of s (the published "modcrop") and
downscaled by MATLAB's imresize(..., 1/s, 'bicubic') on uint8 data, rounding after each 1-D pass
(utils.imresize.matlab_downscale_uint8): bit-exactly the published LR_bicubic/X2..X4 files. X8 rounds once at
the end, as the published X8 files were made. An existing X{s} folder is refused unless --overwrite; each
folder is written under a temporary name and renamed when complete.

Downloads go to <root>/_downloads/ as .part files that are renamed only when complete; archives are
extracted safely (by our own writer: regular files and folders only, never outside the target) and a folder that already exists is left alone.
"""
import argparse
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

DIV2K_URL = 'https://data.vision.ee.ethz.ch/cvl/DIV2K/'
BENCHMARK_URL = 'https://cv.snu.ac.kr/research/EDSR/'

# archive name -> (base url key, folder it must produce relative to its destination, destination)
ARCHIVES = {
    'DIV2K_train_HR.zip': ('div2k', 'DIV2K_train_HR', 'div2k'),
    'DIV2K_valid_HR.zip': ('div2k', 'DIV2K_valid_HR', 'div2k'),
    **{f'DIV2K_{split}_LR_bicubic_X{s}.zip': ('div2k', f'DIV2K_{split}_LR_bicubic/X{s}', 'div2k')
       for split in ('train', 'valid') for s in (2, 3, 4)},
    'benchmark.tar': ('benchmark', 'benchmark/Set5/HR', '.'),
}
GROUPS = {'div2k': [a for a in ARCHIVES if a.startswith('DIV2K')], 'benchmark': ['benchmark.tar']}


class PrepareError(RuntimeError):
    pass


def download(url, target, quiet=False):
    """Fetch ``url`` to ``target`` via ``target.part``; skip if ``target`` exists."""
    if os.path.exists(target):
        return target
    part = target + '.part'
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, 'wb') as f:
            total = int(r.headers.get('Content-Length') or 0)
            bar = None
            if not quiet:
                from tqdm import tqdm
                bar = tqdm(total=total or None, unit='B', unit_scale=True, desc=os.path.basename(target))
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                if bar:
                    bar.update(len(chunk))
            if bar:
                bar.close()
            if total and f.tell() != total:
                raise PrepareError(f'{url}: incomplete download ({f.tell()} of {total} bytes)')
    except (urllib.error.URLError, OSError) as e:
        if os.path.exists(part):
            os.remove(part)
        raise PrepareError(f'cannot download {url}: {getattr(e, "reason", e)}') from None
    os.replace(part, target)
    return target


def _member_path(name, archive):
    """The lexical, relative path of an archive member (POSIX separators), or a PrepareError when it is
    absolute, climbs out ('..') or is empty. Nothing on disk is consulted: the check cannot be fooled by
    links, because extraction never creates any."""
    parts = [p for p in name.replace('\\', '/').split('/') if p not in ('', '.')]
    if name.startswith(('/', '\\')) or (len(name) > 1 and name[1] == ':') or '..' in parts:
        raise PrepareError(f'{archive}: member {name[:120]!r} would be written outside the target; refusing')
    return '/'.join(parts)


def _link_target(member_path, linkname, symbolic, archive):
    """The archive member a link refers to, resolved lexically inside the archive's namespace."""
    base = member_path.rsplit('/', 1)[0] if (symbolic and '/' in member_path) else ''
    if linkname.startswith('/'):
        raise PrepareError(f'{archive}: link {member_path!r} -> {linkname[:120]!r} points outside the archive; '
                           f'refusing')
    parts = []
    for p in (base + '/' + linkname if base else linkname).split('/'):
        if p in ('', '.'):
            continue
        if p == '..':
            if not parts:
                raise PrepareError(f'{archive}: link {member_path!r} -> {linkname[:120]!r} points outside the '
                                   f'archive; refusing')
            parts.pop()
        else:
            parts.append(p)
    return '/'.join(parts)


def _archive_entries(archive):
    """(relative path, kind, reader) for every member: kind 'dir' or 'file'; ``reader()`` returns a binary
    file object. Links (tar symbolic and hard links) become copies of the regular file they name inside the
    archive (a chain is followed, at most 40 steps); a link to anything else, devices, FIFOs and other special
    members are refused."""
    if zipfile.is_zipfile(archive):
        z = zipfile.ZipFile(archive)
        out = []
        for info in z.infolist():
            path = _member_path(info.filename, archive)
            if not path:
                continue
            ftype = stat.S_IFMT(info.external_attr >> 16)      # 0: no Unix type recorded (a plain entry)
            if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise PrepareError(f'{archive}: member {info.filename[:120]!r} is a link or special file; refusing')
            out.append((path, 'dir' if info.is_dir() else 'file', lambda i=info: z.open(i)))
        return z, out
    if not tarfile.is_tarfile(archive):
        raise PrepareError(f'{archive}: not a zip or tar archive')
    t = tarfile.open(archive)
    members = t.getmembers()
    by_path = {}
    for m in members:
        by_path[_member_path(m.name, archive)] = m
    out = []
    for m in members:
        path = _member_path(m.name, archive)
        if not path:
            continue
        src, steps = m, 0
        while src.issym() or src.islnk():
            steps += 1
            target = _link_target(_member_path(src.name, archive), src.linkname, src.issym(), archive)
            nxt = by_path.get(target)
            if nxt is None or steps > 40:
                raise PrepareError(f'{archive}: link {m.name[:120]!r} does not lead to a file inside the archive; '
                                   f'refusing')
            src = nxt
        if src.isdir() and src is m:
            out.append((path, 'dir', None))
        elif src.isfile():
            out.append((path, 'file', lambda s=src: t.extractfile(s)))
        else:
            kind = 'device' if (src.ischr() or src.isblk()) else 'FIFO' if src.isfifo() else 'special file'
            raise PrepareError(f'{archive}: member {m.name[:120]!r} is (or links to) a {kind}; refusing to '
                               f'extract it')
    return t, out


def _write_entries(entries, root):
    """Create the entries under the fresh folder ``root``: folders 0o755, files 0o644, opened with O_EXCL and
    O_NOFOLLOW (a path met twice, or through anything but our own folders, fails)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_BINARY', 0)
    for path, kind, reader in entries:
        target = os.path.join(root, *path.split('/'))
        if kind == 'dir':
            os.makedirs(target, mode=0o755, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, 'wb') as f, reader() as src:
            shutil.copyfileobj(src, f, 1 << 20)


def extract(archive, dest):
    """Extract a zip or tar archive into ``dest``.

    The archive library never writes anything: member names are checked lexically (``_member_path``),
    links are resolved inside the archive and written as copies, special members are refused, and the files
    are created by ``_write_entries`` in a fresh private temporary folder (mode 0o700) that contains nothing
    but folders and regular files of ours; only then are the results moved into ``dest``. A damaged or
    truncated archive, or a refused member, is a one-line ``PrepareError`` and leaves nothing behind."""
    tmp = tempfile.mkdtemp(prefix='.extracting-', dir=dest)
    try:
        handle = None
        try:
            handle, entries = _archive_entries(archive)
            with handle:
                _write_entries(entries, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, ValueError) as e:
            detail = ' '.join(str(e).split())[:200] or type(e).__name__
            raise PrepareError(f'{archive}: damaged or truncated archive ({detail}); delete it and download it '
                               f'again') from None
        except FileExistsError as e:
            raise PrepareError(f'{archive}: member {os.path.relpath(e.filename, tmp)!r} appears twice or '
                               f'collides with a folder; refusing') from None
        for entry in os.listdir(tmp):
            target = os.path.join(dest, entry)
            if os.path.lexists(target):
                _merge(os.path.join(tmp, entry), target)
            else:
                os.replace(os.path.join(tmp, entry), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(src, dst):
    """Move the parts of ``src`` missing in ``dst`` (LR archives share the DIV2K_*_LR_bicubic folder)."""
    for entry in os.listdir(src):
        s, d = os.path.join(src, entry), os.path.join(dst, entry)
        if os.path.isdir(s) and os.path.isdir(d):
            _merge(s, d)
        elif not os.path.lexists(d):
            os.replace(s, d)


def prepare(root='load', only=None, from_dir=None, urls=None, quiet=False, keep_archives=True):
    urls = {'div2k': DIV2K_URL, 'benchmark': BENCHMARK_URL, **(urls or {})}
    names = [a for g in (only or GROUPS) for a in GROUPS[g]]
    # checks before anything is created
    if os.path.exists(root) and not os.path.isdir(root):
        raise PrepareError(f'--root {root}: is a file, not a folder')
    if from_dir is not None:
        if not os.path.isdir(from_dir):
            raise PrepareError(f'--from-dir {from_dir}: folder not found')
        for name in names:
            _, produces, dest = ARCHIVES[name]
            folder = os.path.join(root, dest, produces)
            if not (os.path.isdir(folder) and os.listdir(folder)) and not os.path.isfile(os.path.join(from_dir, name)):
                raise PrepareError(f'{os.path.join(from_dir, name)} not found (--from-dir)')
    created = []

    def makedirs(path):          # remember what we create, to remove it (if still empty) on failure
        missing, p = [], os.path.abspath(path)
        while not os.path.exists(p):
            missing.append(p)
            p = os.path.dirname(p)
        os.makedirs(path, exist_ok=True)
        created.extend(reversed(missing))

    try:
        return _prepare(root, names, from_dir, urls, quiet, keep_archives, makedirs)
    except BaseException:
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:
                pass
        raise


def _prepare(root, names, from_dir, urls, quiet, keep_archives, makedirs):
    downloads = os.path.join(root, '_downloads')
    makedirs(downloads)
    done = []
    for name in names:
        key, produces, dest = ARCHIVES[name]
        dest = os.path.join(root, dest)
        makedirs(dest)
        if os.path.isdir(os.path.join(dest, produces)) and os.listdir(os.path.join(dest, produces)):
            done.append(f'{os.path.join(dest, produces)} (already there)')
            continue
        if from_dir:
            archive = os.path.join(from_dir, name)
            if not os.path.exists(archive):
                raise PrepareError(f'{archive} not found (--from-dir)')
        else:
            archive = download(urls[key].rstrip('/') + '/' + name, os.path.join(downloads, name), quiet)
        extract(archive, dest)
        if not os.path.isdir(os.path.join(dest, produces)):
            raise PrepareError(f'{name} did not produce {os.path.join(dest, produces)}')
        if not keep_archives and not from_dir:
            os.remove(archive)
        done.append(os.path.join(dest, produces))
    return done


#: Scales whose published LR files were rounded once at the end rather than after each pass (utils/imresize.py).
ROUND_ONCE_SCALES = (8,)


def parse_scales(text):
    """``'2,3,4'`` -> [2, 3, 4]: positive integers, no repeats."""
    try:
        scales = [int(v) for v in str(text).split(',') if v.strip()]
    except ValueError:
        raise PrepareError(f'--scales {text!r}: expected integers such as 2,3,4') from None
    if not scales or any(s < 2 or s > 64 for s in scales) or len(set(scales)) != len(scales):
        raise PrepareError(f'--scales {text!r}: expected distinct integers from 2 to 64, such as 2,3,4')
    return scales


def lr_name(hr_file, scale):
    """``baby.png`` -> ``babyx2.png`` (the published benchmark naming; always PNG)."""
    return f'{os.path.splitext(os.path.basename(hr_file))[0]}x{scale}.png'


def lr_plan(root, scales, overwrite=False):
    """The checks of ``make_lr`` (nothing written): (HR folder, HR file names, LR_bicubic folder, {s: X{s} folder})."""
    from utils.image import is_image_file
    hr_dir = os.path.join(root, 'HR')
    if not os.path.isdir(hr_dir):
        raise PrepareError(f'--make-lr {root}: no HR folder ({hr_dir} not found)')
    files = sorted(f for f in os.listdir(hr_dir) if is_image_file(f) and os.path.isfile(os.path.join(hr_dir, f)))
    if not files:
        raise PrepareError(f'--make-lr {root}: no image files in {hr_dir}')
    stems = [os.path.splitext(f)[0] for f in files]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup is not None:
        raise PrepareError(f'{hr_dir}: two images named {dup} (different extensions); their LR files would collide')
    lr_root = os.path.join(root, 'LR_bicubic')
    if os.path.exists(lr_root) and not os.path.isdir(lr_root):
        raise PrepareError(f'{lr_root} is a file, not a folder')
    targets = {s: os.path.join(lr_root, f'X{s}') for s in scales}
    for s, folder in targets.items():
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise PrepareError(f'{folder} is a file, not a folder')
        if os.path.exists(folder) and not overwrite:
            raise PrepareError(f'{folder} already exists; pass --overwrite to replace it')
    return hr_dir, files, lr_root, targets


def make_lr(root, scales, overwrite=False, quiet=False):
    """Write ``root/LR_bicubic/X{s}/<name>x{s}.png`` for every image of ``root/HR`` (see the module docstring).

    Checks everything before writing (``lr_plan``; images: 8 bits without alpha, at least ``s`` pixels a side).
    Each folder is written under a temporary name next to it and renamed when complete; on failure nothing new
    is left. Returns the folders written.
    """
    import numpy as np
    import torch
    from PIL import Image

    from utils.image import load_array
    from utils.imresize import imresize, matlab_downscale_uint8
    hr_dir, files, lr_root, targets = lr_plan(root, scales, overwrite)
    created_root = not os.path.isdir(lr_root)
    stages = {s: os.path.join(lr_root, f'.X{s}.partial-{os.getpid()}') for s in scales}
    bar = None
    if not quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(files) * len(scales), unit='img', desc=f'LR of {os.path.basename(os.path.normpath(root))}')
    try:
        for folder in stages.values():
            os.makedirs(folder)
        for f in files:
            path = os.path.join(hr_dir, f)
            try:
                hr, info = load_array(path)
            except Exception as e:       # noqa: BLE001  (unreadable image: one line naming it)
                raise PrepareError(f'{path}: cannot read the image ({" ".join(str(e).split())})') from None
            if hr.dtype != np.uint8 or info.has_alpha:
                raise PrepareError(f'{path}: expected an 8-bit gray or RGB image without alpha (the benchmark LR '
                                   f'files are 8-bit), got {hr.dtype.name}{" with alpha" if info.has_alpha else ""}')
            for s in scales:
                if min(hr.shape[:2]) < s:
                    raise PrepareError(f'{path}: {hr.shape[0]}x{hr.shape[1]} (HxW) is smaller than the scale {s}')
                if s in ROUND_ONCE_SCALES:
                    t = np.ascontiguousarray(hr[:hr.shape[0] // s * s, :hr.shape[1] // s * s])
                    t = torch.from_numpy(t)
                    t = t.permute(2, 0, 1) if t.dim() == 3 else t
                    lr = imresize(t, scale=1 / s, round_each_pass=False)
                    lr = (lr.permute(1, 2, 0) if lr.dim() == 3 else lr).contiguous().numpy()
                else:
                    lr = matlab_downscale_uint8(hr, s)
                Image.fromarray(lr).save(os.path.join(stages[s], lr_name(f, s)), format='PNG')
                if bar is not None:
                    bar.update(1)
        done = []
        for s in scales:
            old = None
            if os.path.exists(targets[s]):
                old = os.path.join(lr_root, f'.X{s}.old-{os.getpid()}')
                os.replace(targets[s], old)
            os.replace(stages[s], targets[s])
            if old:
                shutil.rmtree(old, ignore_errors=True)
            done.append(targets[s])
        return done
    except BaseException:
        for folder in stages.values():
            shutil.rmtree(folder, ignore_errors=True)
        if created_root and os.path.isdir(lr_root) and not os.listdir(lr_root):
            os.rmdir(lr_root)
        raise
    finally:
        if bar is not None:
            bar.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default='load', help='where the data goes (default: load)')
    p.add_argument('--only', nargs='+', choices=sorted(GROUPS), help='prepare only these groups')
    p.add_argument('--from-dir', help='take the archives from this folder instead of downloading')
    p.add_argument('--div2k-url', default=DIV2K_URL, help=f'base URL of the DIV2K archives (default {DIV2K_URL})')
    p.add_argument('--benchmark-url', default=BENCHMARK_URL,
                   help=f'base URL of benchmark.tar (default {BENCHMARK_URL})')
    p.add_argument('--delete-archives', action='store_true', help='remove downloaded archives after extraction')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    p.add_argument('--make-lr', metavar='ROOT', nargs='+',
                   help='instead of downloading: write ROOT/LR_bicubic/X{s} (MATLAB bicubic, the published benchmark '
                        'LR files) from ROOT/HR for each --scales s')
    p.add_argument('--scales', default='2,3,4', help='--make-lr: integer scales (default 2,3,4)')
    p.add_argument('--overwrite', action='store_true', help='--make-lr: replace existing LR_bicubic/X{s} folders')
    args = p.parse_args(argv)
    try:
        if args.make_lr:
            scales = parse_scales(args.scales)
            for root in args.make_lr:                  # every root checked before anything is written
                lr_plan(root, scales, args.overwrite)
            done = [d for root in args.make_lr for d in make_lr(root, scales, args.overwrite, args.quiet)]
        else:
            done = prepare(args.root, args.only, args.from_dir,
                           {'div2k': args.div2k_url, 'benchmark': args.benchmark_url}, args.quiet,
                           keep_archives=not args.delete_archives)
    except (PrepareError, OSError) as e:
        print(f'prepare_data.py: error: {" ".join(str(e).split())}', file=sys.stderr)
        return 1
    for d in done:
        print('ready:', d)
    return 0

if __name__ == '__main__':
    sys.exit(main())
