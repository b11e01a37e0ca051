"""Shared command-line plumbing: one clear error line instead of a traceback.

Every ``python -m minicaffe.*`` entry point wraps its ``main`` with :func:`run`: a
:class:`MinicaffeError` (bad file, bad argument, missing backend) becomes ``minicaffe: error:
<message>`` on stderr and exit status 2; so do an ``OSError`` (an unwritable or odd path, a full
disk: the line names the file and the system's reason) and a ``MemoryError``. Ctrl-C exits 130
with ``minicaffe: interrupted`` and, when the command raised :class:`Interrupted`, how to go on.
Other exceptions are bugs and keep their traceback. :func:`shown` makes any path printable on one
line. It does not parse arguments; each command's ``main`` does.
"""
from __future__ import annotations

import os
import sys
import warnings

from .errors import MinicaffeError, MinicaffeWarning


class Interrupted(KeyboardInterrupt):
    """Ctrl-C with advice: ``str(e)`` says how to continue (e.g. ``--resume``)."""


def shown(path):
    """A path or name -> one printable line: bytes that are not UTF-8 (file names are any bytes on
    Linux; Python keeps them as surrogate escapes) as ``\\xNN``, control characters as ``\\n`` etc."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    try:
        s = os.fsencode(s).decode("utf-8", "backslashreplace")
    except UnicodeError:
        s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    if s.isprintable():
        return s
    import unicodedata
    # control, format (direction overrides) and line/paragraph separators: escaped; other text stays
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _ESCAPED else c
                   for c in s)


_ESCAPED = ("Cc", "Cf", "Zl", "Zp", "Cs")


def check_writable(path, flag):
    """Before long work: MinicaffeError unless ``path``'s folder exists and this user may create
    files in it (``flag``: the option that named it), so the work is not lost at the end."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise MinicaffeError(f"{flag} {shown(path)}: no such folder {shown(folder)}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MinicaffeError(f"{flag} {shown(path)}: cannot write in {shown(folder)} (permission denied)")
    if os.path.isdir(path):
        raise MinicaffeError(f"{flag} {shown(path)}: is a folder; give a file name")


def os_error_line(e):
    """OSError -> '<file>: <reason>' (the file and the system's words, no errno number)."""
    what = e.strerror or str(e) or type(e).__name__
    names = [n for n in (e.filename, getattr(e, "filename2", None)) if n is not None]
    return ": ".join([*(shown(n) for n in names), what]) if names else what


def _one_line_warnings(show):
    """-> a ``warnings.showwarning`` that prints minicaffe's own warnings as one ``minicaffe:
    warning:`` line (no source line) and hands every other warning to ``show``."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MinicaffeWarning):
            print(f"minicaffe: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def run(main, argv=None):
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warnings(previous)
    try:
        return _run(main, argv)
    finally:
        warnings.showwarning = previous


def _run(main, argv):
    try:
        rc = main(argv)
    except MinicaffeError as e:
        print(f"minicaffe: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"minicaffe: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except MemoryError as e:
        why = f" ({e})" if str(e) else ""
        print(f"minicaffe: error: out of memory{why}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = str(e) if isinstance(e, Interrupted) and str(e) else ""
        print("minicaffe: interrupted" + (f"; {how}" if how else ""), file=sys.stderr)
        return 130
    return 0 if rc is None else rc


def exit_with(main):
    sys.exit(run(main))
