"""Headless pictures: a structure coloured by one SAE feature, ray-traced by PyMOL to a PNG.

Rendering uses a private ``pymol2.PyMOL()`` instance, so it neither needs nor disturbs a running
PyMOL session, and colours through the same :func:`.commands.color` as the ``interplm color``
command. A legend strip under the picture names the feature and its best concept and shows the
palette from 0 to 1 and the neutral colour of residues without a value.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from interplm_plugins.core.atomic import atomic_path
from interplm_plugins.core.interpret.colorscale import DEFAULT_SCALE
from interplm_plugins.core.interpret.pipeline import Pipeline
from interplm_plugins.errors import InterPLMError
from interplm_plugins.pymol_plugin import commands
from interplm_plugins.pymol_plugin.mapping import DEFAULT_PALETTE, NEUTRAL_COLOR, palette_rgb
from interplm_plugins.session import current_pipeline

_OBJECT = "structure"
_CHAIN_ID = re.compile(r"^[A-Za-z0-9]{1,4}$")
_BACKGROUND = "white"
_CONTEXT_COLOR = "grey90"  # other chains, when one chain is coloured: pale and see-through
_CONTEXT_TRANSPARENCY = 0.7


def _check_size(name: str, value: int) -> int:
    value = int(value)
    if not 16 <= value <= 8000:
        raise InterPLMError(f"{name} must be between 16 and 8000 pixels, got {value}")
    return value


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _legend(width: int, height: int, title: str, rgb: np.ndarray, neutral: tuple[float, float, float], top: str = "1"):
    """A ``width`` x ``height`` strip: the title, the palette as a bar from 0 to ``top``, the no-value swatch."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(strip)
    margin = max(4, height // 8)
    size = max(10, height // 4)
    while size > 8 and draw.textlength(title, font=_font(size)) > width - 2 * margin:  # long titles: smaller type
        size -= 1
    font = _font(size)
    draw.text((margin, margin // 2), title, fill="black", font=font)
    bar_top, bar_bottom = height // 2, height - margin
    bar_left, bar_right = margin + width // 20, width * 3 // 5
    steps = np.linspace(0, 1, max(2, bar_right - bar_left))
    colors = np.array([np.interp(steps * (len(rgb) - 1), np.arange(len(rgb)), rgb[:, c]) for c in range(3)]).T
    for x, color in enumerate((colors * 255).round().astype(int)):
        draw.line([(bar_left + x, bar_top), (bar_left + x, bar_bottom)], fill=tuple(color.tolist()))
    draw.text((margin, bar_top), "0", fill="black", font=font)
    draw.text((bar_right + margin // 2, bar_top), top, fill="black", font=font)
    swatch = bar_right + 3 * margin + int(draw.textlength(top, font=font))
    draw.rectangle([swatch, bar_top, swatch + (bar_bottom - bar_top), bar_bottom], fill=tuple(int(round(v * 255)) for v in neutral))
    draw.text((swatch + (bar_bottom - bar_top) + margin // 2, bar_top), "no value", fill="black", font=font)
    return strip


def render_feature_png(
    structure_path: str | os.PathLike,
    feature: int,
    out_png: str | os.PathLike,
    *,
    chain: str | None = None,
    reference: str | None = None,
    palette: str = DEFAULT_PALETTE,
    scale: str = DEFAULT_SCALE,
    width: int = 800,
    height: int = 600,
    pipeline: Pipeline | None = None,
    legend: bool = True,
) -> dict[str, Any]:
    """Render ``structure_path`` coloured by ``feature`` to ``out_png`` (written atomically).

    ``chain`` colours one chain (the others are drawn light grey); ``reference`` is a full-length
    sequence (or a FASTA file, one record per protein) the chains are aligned to, as ``uniprot=``
    in PyMOL; ``scale`` is ``feature`` (0..1) or ``chain`` (each chain's maximum).
    The image is ``width`` x ``height`` pixels including the legend strip. Returns the per-residue
    values and summary of :func:`.commands.color`, plus ``png``, ``width`` and ``height``.
    """
    import pymol2
    from PIL import Image
    from pymol import CmdException

    pipeline = pipeline or current_pipeline()
    feature = pipeline.check_feature(int(feature))
    width, height = _check_size("width", width), _check_size("height", height)
    path = Path(structure_path)
    if not path.is_file():
        raise InterPLMError("no such structure file", file=path)
    if chain is not None and not _CHAIN_ID.match(str(chain)):
        raise InterPLMError(f"chain {chain!r} is not a chain id (1-4 letters or digits)")
    legend_height = min(max(48, height // 8), height // 3) if legend else 0

    session = pymol2.PyMOL()
    session.start()
    try:
        pm = session.cmd
        try:
            pm.load(str(path), _OBJECT)
        except CmdException as exc:
            raise InterPLMError(f"PyMOL cannot read this structure ({str(exc).strip()})", file=path) from None
        selection = _OBJECT if chain is None else f"{_OBJECT} and chain {chain}"
        if pm.count_atoms(selection) == 0:
            raise InterPLMError(f"no atoms in chain {chain}" if chain else "no atoms", file=path)
        pm.remove("solvent")
        context = f"{_OBJECT} and not ({selection})"
        pm.color(_CONTEXT_COLOR, context)
        pm.set("cartoon_transparency", _CONTEXT_TRANSPARENCY, context)
        summary = commands.color(selection, feature, palette, reference, scale, pipeline=pipeline, sources={_OBJECT: str(path)}, _self=pm)
        pm.hide("everything")
        pm.show("cartoon", "polymer")
        pm.show("sticks", "organic")
        pm.show("spheres", "inorganic")
        pm.orient(selection)
        pm.bg_color(_BACKGROUND)
        pm.set("ray_opaque_background", 1)
        rgb, neutral = palette_rgb(palette, pm), pm.get_color_tuple(NEUTRAL_COLOR)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "view.png"
            pm.png(str(raw), width=width, height=height - legend_height, ray=1, quiet=1)
            view = Image.open(raw).convert("RGB")
    finally:
        session.stop()

    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    canvas.paste(view.resize((width, height - legend_height)) if view.size != (width, height - legend_height) else view, (0, 0))
    if legend:
        title = f"InterPLM feature {feature}: {summary['best_concept_label']} ({path.name}{f', chain {chain}' if chain else ''})"
        top = "1" if summary["scale"] == "feature" else "chain max"
        canvas.paste(_legend(width, legend_height, title, rgb, neutral, top), (0, height - legend_height))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return {**summary, "png": str(out_png), "width": width, "height": height}
