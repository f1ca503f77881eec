"""Upscaling every image of a folder (``demo.py --input photos/ --output out/``, ``api.upscale('photos/')``).

* ``plan_folder`` decides, before any model is loaded, which files are read and where their outputs go:
  the output tree mirrors the input tree (same sub-folders, same file names; a file whose extension cannot
  be written, e.g. ``.gif``, gets ``.png``). Images whose output exists are skipped unless ``overwrite``.
  An output folder equal to the input folder is refused; one inside it is never read as input (it is
  skipped when recursing). Hidden files and non-images are ignored.
* ``run_folder`` upscales the planned images one by one with a caller's ``upscale_one(src, dst)`` (the
  single-image pipeline of ``demo.py`` or the API), a tqdm bar over images, and keeps going past an image
  that fails (its reason is reported; nothing is left for it). ``FolderSummary.line()`` is the summary
  line: ``3 upscaled, 1 skipped (output exists; --overwrite replaces), 1 failed``.
"""
import dataclasses
import os
import sys

from utils.validate import InputError

#: what a skipped image's output is reported as
EXISTS = 'output exists'


@dataclasses.dataclass
class FolderPlan:
    """Jobs ``(src, dst)`` in sorted order and the images skipped ``(src, reason)``."""
    jobs: list
    skipped: list
    input: str
    output: str


@dataclasses.dataclass
class FolderSummary:
    upscaled: list = dataclasses.field(default_factory=list)     # (src, dst)
    skipped: list = dataclasses.field(default_factory=list)      # (src, reason)
    failed: list = dataclasses.field(default_factory=list)       # (src, reason)

    def line(self, overwrite_flag='--overwrite'):
        parts = [f'{len(self.upscaled)} upscaled']
        if self.skipped:
            parts.append(f'{len(self.skipped)} skipped ({EXISTS}; {overwrite_flag} replaces)')
        parts.append(f'{len(self.failed)} failed')
        text = ', '.join(parts)
        if self.failed:
            shown = '; '.join(f'{os.path.basename(src)}: {reason}' for src, reason in self.failed[:3])
            more = f'; and {len(self.failed) - 3} more' if len(self.failed) > 3 else ''
            text += f' ({shown}{more})'
        return text


def _inside(path, folder):
    """True when ``path`` is ``folder`` or below it (real paths)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def output_name(relative):
    """The output file's path relative to the output folder: the input's, with ``.png`` where the input's
    extension cannot be written."""
    from utils.image import SAVE_FORMATS
    stem, ext = os.path.splitext(relative)
    return relative if ext.lower() in SAVE_FORMATS else stem + '.png'


def plan_folder(input_dir, output_dir, recursive=False, overwrite=False, input_name='--input',
                output_name_flag='--output'):
    """The images of ``input_dir`` (and its sub-folders with ``recursive``) and their outputs in ``output_dir``;
    ``InputError`` for a bad folder pair (nothing created)."""
    from utils import validate
    from utils.image import is_image_file
    input_dir, output_dir = os.fspath(input_dir), os.fspath(output_dir)
    validate.input_folder(input_dir, input_name)
    validate.output_folder(output_dir, output_name_flag)
    if os.path.exists(output_dir) and os.path.samefile(input_dir, output_dir):
        raise InputError(f'{output_name_flag} {output_dir} is the input folder; outputs would replace the inputs, '
                         f'give another folder')
    sources = []
    if recursive:
        for root, dirs, files in os.walk(input_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith('.')
                             and not _inside(os.path.join(root, d), output_dir))
            sources += [os.path.join(root, f) for f in sorted(files) if is_image_file(f)]
    else:
        sources = [os.path.join(input_dir, f) for f in sorted(os.listdir(input_dir))
                   if is_image_file(f) and os.path.isfile(os.path.join(input_dir, f))]
    if not sources:
        raise InputError(f'{input_name} {input_dir}: no images found' + ('' if recursive else
                                                                        ' (--recursive reads sub-folders)'))
    jobs, skipped, seen = [], [], {}
    for src in sources:
        dst = os.path.join(output_dir, output_name(os.path.relpath(src, input_dir)))
        if dst in seen:
            raise InputError(f'{input_name}: {seen[dst]} and {src} would both be written to {dst}; rename one')
        seen[dst] = src
        if os.path.exists(dst) and not overwrite:
            skipped.append((src, EXISTS))
        else:
            jobs.append((src, dst))
    return FolderPlan(jobs, skipped, input_dir, output_dir)


def _made_folders(dst, output_dir):
    """The folders between ``output_dir`` (included) and ``dst`` that do not exist yet, outermost first."""
    missing, folder = [], os.path.dirname(os.path.abspath(dst))
    top = os.path.abspath(output_dir)
    while not os.path.exists(folder):
        missing.append(folder)
        if folder == top:
            break
        folder = os.path.dirname(folder)
    return missing[::-1]


def run_folder(plan, upscale_one, progress=True, desc='images'):
    """Call ``upscale_one(src, dst)`` for each job of ``plan``; an image that fails with a user-facing error
    (``engine.errors.expected_errors``, out of memory) is counted with its one-line reason and the run goes on
    (folders created for it are removed again). Returns a ``FolderSummary``."""
    from .errors import expected_errors, out_of_memory_errors
    from utils.validate import message
    summary = FolderSummary(skipped=list(plan.skipped))
    bar = None
    jobs = plan.jobs
    if progress and jobs:
        from tqdm import tqdm
        bar = tqdm(jobs, desc=desc, unit='img', dynamic_ncols=True, file=sys.stderr)
        jobs = bar
    try:
        for src, dst in jobs:
            made = _made_folders(dst, plan.output)
            for folder in made:
                os.makedirs(folder, exist_ok=True)
            try:
                upscale_one(src, dst)
            except out_of_memory_errors():
                summary.failed.append((src, 'out of memory (use --tile or a smaller --scale/--size)'))
            except expected_errors() as e:
                summary.failed.append((src, message(e)))
            else:
                summary.upscaled.append((src, dst))
                continue
            for folder in reversed(made):          # nothing left behind for a failed image
                try:
                    os.rmdir(folder)
                except OSError:
                    break
    finally:
        if bar is not None:
            bar.close()
    return summary
