"""Render the demo protein coloured by an SAE feature in a shown napari window and save screenshots.

Run on a real X display (tests/test_napari_plugin.py starts Xvfb for it; Qt's offscreen platform
renders nothing):

    python tests/napari_screenshot.py OUT_DIR [--model M --sae S --database D] [--feature F]

Writes ``OUT_DIR/canvas.png`` (the 3D view only) and ``OUT_DIR/window.png`` (with the widget docked).
Without ``--feature`` it picks the feature whose activation varies most along chain A.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model")
    parser.add_argument("--sae")
    parser.add_argument("--database")
    parser.add_argument("--feature", type=int)
    args = parser.parse_args(argv)
    # no warning toasts over the picture; set through the environment so the user's settings file is untouched
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")

    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication

    from interplm_plugins.core.interpret.chains import chain_activations
    from interplm_plugins.napari_plugin._sample_data import demo_structure_path
    from interplm_plugins.session import use_pipeline

    pipeline = use_pipeline(model=args.model, sae=args.sae, database=args.database)
    viewer = napari.Viewer(show=True, title="interplm-plugins napari demo")
    viewer.window.resize(1400, 820)
    viewer.open(demo_structure_path(), plugin="interplm-plugins")
    _, widget = viewer.window.add_plugin_dock_widget("interplm-plugins", "Color by feature")
    layer = widget.layer_combo.value
    feature = args.feature
    if feature is None:
        acts = chain_activations(pipeline, layer.metadata["interplm"]["chains"]["A"]).activations
        feature = int(acts.std(axis=0).argmax())
    widget.chain_combo.value = "A"  # chain B stays grey: shows the legend's "no value" colour
    widget.color(feature)
    while widget.busy:
        QApplication.processEvents()
    QApplication.processEvents()  # let the docked widget settle the canvas size before framing
    viewer.reset_view()
    viewer.camera.angles = (10, -30, 60)
    viewer.camera.zoom *= 0.8  # reset_view frames the unrotated box; the rotated one is wider
    args.out_dir.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out_dir / "canvas.png", viewer.screenshot(canvas_only=True, flash=False))
    iio.imwrite(args.out_dir / "window.png", viewer.screenshot(canvas_only=False, flash=False))
    print(f"feature {feature}: {widget.legend.value!r}; {widget.status.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
