"""``python -m minicaffe.explain``: the command's entry point, and the old import path of its pieces.

The command lives in :mod:`minicaffe.tools.explain`, saliency, occlusion, unit statistics, the
manifest and the plots in :mod:`minicaffe.explanation`; this module runs the one and re-exports
both, so that ``python -m minicaffe.explain`` and ``from minicaffe import explain as E;
E.saliency(...)`` keep working.
"""
from .cli import exit_with
from .errors import UsageError
from .explanation import (
    MANIFEST_FORMAT,
    Manifest,
    Target,
    classes_for,
    fill_values,
    forward_scores,
    input_gradient,
    load_inputs,
    logits_blob,
    manifest_report,
    most_salient_box,
    occlude,
    occlusion_boxes,
    occlusion_map,
    open_features,
    parse_unit,
    resolve_blob,
    saliency,
    saliency_map,
    salient_vs_random,
    sample_photos,
    save_grid,
    save_overlay,
    save_stats_plot,
    save_top_images,
    target_scores,
    unit_statistics,
    unit_values,
)
from .tools.explain import EXAMPLES, build_parser, check_main, grid_main, main

__all__ = ["EXAMPLES", "MANIFEST_FORMAT", "Manifest", "Target", "UsageError", "build_parser", "check_main",
           "classes_for", "fill_values", "forward_scores", "grid_main", "input_gradient", "load_inputs",
           "logits_blob", "main", "manifest_report", "most_salient_box", "occlude", "occlusion_boxes", "occlusion_map",
           "open_features", "parse_unit", "resolve_blob", "saliency", "saliency_map", "salient_vs_random",
           "sample_photos", "save_grid", "save_overlay", "save_stats_plot", "save_top_images", "target_scores",
           "unit_statistics", "unit_values"]

if __name__ == "__main__":
    exit_with(main)
