"""``python -m minicaffe.profile``: the command's entry point, and the old import path of the profiler.

The command lives in :mod:`minicaffe.tools.profile`, the measuring, log parsing, tables and charts in
:mod:`minicaffe.profiling`; this module runs the one and re-exports both, so that
``python -m minicaffe.profile`` and ``from minicaffe.profile import profile, profile_net`` keep working.
"""
from .cli import exit_with
from .profiling import (
    GROUPS,
    SCHEMA,
    LayerTimer,
    attach_caffe,
    format_caffe,
    format_table,
    group_caffe_log,
    layer_group,
    machine_info,
    parse_caffe_log,
    plot,
    profile,
    profile_net,
    write_html_report,
)
from .tools.profile import build_parser, main

__all__ = ["GROUPS", "SCHEMA", "LayerTimer", "attach_caffe", "build_parser", "format_caffe", "format_table",
           "group_caffe_log", "layer_group", "machine_info", "main", "parse_caffe_log", "plot", "profile",
           "profile_net", "write_html_report"]

if __name__ == "__main__":
    exit_with(main)
