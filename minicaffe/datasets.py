"""Turn command-line INPUTs into one ordered list of image paths, with labels when the layout has them.

An INPUT is one of:

* a **folder**, walked recursively in sorted order for files with an image extension
  (:data:`IMAGE_EXTENSIONS`, case-insensitive; hidden files and folders are skipped). If the
  folder holds no images directly but has sub-folders, it is read as an ``ImageFolder`` layout
  ``root/<class_name>/**/<image>``: each image gets the label of its first-level sub-folder,
  classes numbered in sorted name order (as torchvision's ``ImageFolder``). Symbolic links are
  followed, but each real folder and file is visited once (link cycles end; a file reached by two
  links or hard-linked twice is listed once); names may hold any bytes;
* a **text list** (extension ``.txt``, ``.lst``, ``.list``, ``.tsv``): one image per line,
  ``path`` or ``path label`` where a trailing integer is the label, or ``path<TAB>label`` where
  the label may be any string (a class name). Relative paths are taken relative to the list's
  folder (``root`` overrides). Blank lines and lines starting with ``#`` are skipped. Entries
  are not checked here: a missing or broken file becomes a ``failed`` row at extraction time;
* any other **file**: one image (whether it decodes is decided at extraction time).

Several INPUTs are concatenated in the order given; class names from several ImageFolder
roots (``train/`` and ``test/``) are merged by name; images with no label get -1. A path listed
twice is kept once (first occurrence). This module does not open images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff",
                    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".tsv")
NO_LABEL = -1


@dataclass
class Listing:
    paths: list = field(default_factory=list)
    labels: list = field(default_factory=list)        # int per path, NO_LABEL when unknown
    class_names: list | None = None                   # index -> name, when labels are class names
    duplicates: int = 0

    @property
    def has_labels(self):
        return any(l != NO_LABEL for l in self.labels)


def is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(root, seen=None):
    """Sorted recursive list of image files under root (hidden entries skipped).

    Symbolic links are followed, but each real folder and each real file (``(st_dev, st_ino)``) is
    visited once, so link cycles end and a file reached by two links is listed once (the first
    path in walk order; ``seen`` carries the set across calls). The order is ``os.walk``'s
    top-down order: a folder's files, sorted, then its sub-folders, sorted. Unreadable folders are
    skipped as ``os.walk`` skips them. Names may hold any bytes (Python's surrogate escapes).
    """
    seen = set() if seen is None else seen
    out = []
    _mark_dir(root, seen)
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                entries = list(it)
        except OSError:
            continue
        files, dirs = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            try:
                st = e.stat()
                key = (st.st_dev, st.st_ino)
            except OSError:          # a dangling link: listed as os.walk does, it fails at extraction
                key = None
            if is_dir:
                if key is None or ("dir", *key) not in seen:
                    if key is not None:
                        seen.add(("dir", *key))
                    dirs.append(e.name)
            elif is_image_name(e.name) and (key is None or key not in seen):
                if key is not None:
                    seen.add(key)
                files.append(e.name)
        out.extend(os.path.join(top, fn) for fn in sorted(files))
        stack.extend(os.path.join(top, d) for d in sorted(dirs, reverse=True))
    return out


def _mark_dir(path, seen):
    try:
        st = os.stat(path)
        seen.add(("dir", st.st_dev, st.st_ino))
    except OSError:
        pass


def _is_image_folder_layout(root):
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    has_direct_images = any(e.is_file() and is_image_name(e.name) for e in entries)
    subdirs = [e for e in entries if e.is_dir()]
    return (not has_direct_images) and bool(subdirs)


def _read_list(path, root=None):
    """Parse a text list -> [(path, label or None)] where label is an int or a class-name str."""
    base = root if root is not None else os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: list file is not UTF-8 text ({e.reason} at byte {e.start}); "
                         "if it is an image, give it an image extension") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read list file: {e.strerror or e}") from None
    out = []
    for lineno, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        label = None
        if "\t" in s:
            p, _, lab = s.rpartition("\t")
            p, lab = p.strip(), lab.strip()
            if not p:
                raise InputError(f"{path}:{lineno}: no path before the tab")
            label = int(lab) if _is_int(lab) else lab
        else:
            parts = s.rsplit(None, 1)
            if len(parts) == 2 and _is_int(parts[1]):
                p, label = parts[0], int(parts[1])
            else:
                p = s
        if not os.path.isabs(p):
            p = os.path.join(base, p) if base else p
        out.append((os.path.normpath(p), label))
    return out


def _is_int(s):
    try:
        int(s)
        return True
    except ValueError:
        return False


def list_inputs(inputs, root=None, labels=True):
    """INPUT strings -> :class:`Listing`. Raises InputError for a missing INPUT or a bad list.

    root : base folder for relative paths inside text lists (default: each list's folder).
    labels : False ignores ImageFolder layouts and list labels (all -1).
    """
    entries = []          # (path, int label | str class name | None)
    seen = set()          # (st_dev, st_ino) of every folder and file walked: link cycles end
    for inp in inputs:
        s = os.fspath(inp)
        if os.path.isdir(s):
            _mark_dir(s, seen)
            if labels and _is_image_folder_layout(s):
                classes = sorted(e.name for e in os.scandir(s) if e.is_dir() and not e.name.startswith("."))
                for d in classes:        # a link inside one class folder cannot pull in another class
                    _mark_dir(os.path.join(s, d), seen)
                for d in classes:
                    for p in _walk_images(os.path.join(s, d), seen):
                        entries.append((os.path.normpath(p), d))
            else:
                entries.extend((os.path.normpath(p), None) for p in _walk_images(s, seen))
        elif os.path.lexists(s):
            if s.lower().endswith(LIST_EXTENSIONS):
                entries.extend(_read_list(s, root))
            else:
                entries.append((os.path.normpath(s), None))
        else:
            raise InputError(f"{s}: no such file or folder")
    if not labels:
        entries = [(p, None) for p, _ in entries]
    names = sorted({l for _, l in entries if isinstance(l, str)})
    ints = any(isinstance(l, int) for _, l in entries)
    if names and ints:
        raise InputError("inputs mix integer labels and class names; use one kind "
                         f"(class names: {names[:5]}{'...' if len(names) > 5 else ''})")
    index = {n: i for i, n in enumerate(names)}
    out = Listing(class_names=names or None)
    seen = set()      # paths: a path listed twice is kept once
    for p, l in entries:
        if p in seen:
            out.duplicates += 1
            continue
        seen.add(p)
        out.paths.append(p)
        out.labels.append(NO_LABEL if l is None else (index[l] if isinstance(l, str) else int(l)))
    return out
