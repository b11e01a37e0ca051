"""``python -m minicaffe.report``: the command's entry point, and the old import path of the HTML pages.

The command lives in :mod:`minicaffe.tools.report`, the sections, rendering and browser check in
:mod:`minicaffe.html_report`; this module runs the one and re-exports both, so that
``python -m minicaffe.report`` and ``from minicaffe import report; report.write_html(...)`` keep working.
"""
from .cli import exit_with
from .html_report import (
    BROWSERS,
    CSP,
    Figure,
    Gallery,
    Neighbours,
    Table,
    Text,
    Thumb,
    browser_check,
    data_uri,
    find_browser,
    render_html,
    write_html,
)
from .tools.report import build_parser, main

__all__ = ["BROWSERS", "CSP", "Figure", "Gallery", "Neighbours", "Table", "Text", "Thumb", "browser_check",
           "build_parser", "data_uri", "find_browser", "main", "render_html", "write_html"]

if __name__ == "__main__":
    exit_with(main)
