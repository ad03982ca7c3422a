"""Where the published checkpoints of the registered models come from.

The published files hold a bare state_dict (no model name, no options), so this table says which
registered model each file is, under which file name its project distributes it, and the constructor
options it needs beyond the defaults. `models.load_model` infers the model from these file names;
evaluation names the project and file when a checkpoint is missing.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class PublishedWeights:
    project: str                  # GitHub project (owner/name)
    file: str                     # file name as the project distributes it ({scale}: SR factor)
    source: str                   # where in the project the file is found
    options: Dict[str, Any] = field(default_factory=dict)   # build_model options the file needs

    def file_name(self, scale: int = 2) -> str:
        return self.file.format(scale=scale)


_NRLGDN = ("kongsjsj/NRL-GDN", "the Google Drive link in its README")
_DSDNET = ("setsunil/DSDNet", "models.zip, linked in its README")
_VIRNET = ("zsyOAOA/VIRNet", "its model_zoo/ folder")

PUBLISHED: Dict[str, PublishedWeights] = {
    "NRL_GDN": PublishedWeights(_NRLGDN[0], "NRL_GDN.pth", _NRLGDN[1]),
    "NRL_GDN_Y0": PublishedWeights(_NRLGDN[0], "NRL_GDN_Y0.pth", _NRLGDN[1]),
    "rgdn_uniform": PublishedWeights(_NRLGDN[0], "rgdn_uniform.pth", _NRLGDN[1]),
    "DSD_full": PublishedWeights(_DSDNET[0], "DSD_full.pth", _DSDNET[1]),
    "DSD_light": PublishedWeights(_DSDNET[0], "DSD_light.pth", _DSDNET[1]),
    "DSDplus_p": PublishedWeights(_DSDNET[0], "DSDplus_p.pth", _DSDNET[1]),
    "DSDplus_e": PublishedWeights(_DSDNET[0], "DSDplus_e.pth", _DSDNET[1]),
    "VIRNet_denoise_syn": PublishedWeights(_VIRNET[0], "virnet_denoising_syn.pth", _VIRNET[1]),
    "VIRNet_denoise_real": PublishedWeights(_VIRNET[0], "virnet_denoising_real.pth", _VIRNET[1]),
    # the released SR weights predate the corrected σ and kernel conventions (see models/virnet.py)
    "VIRNet_sisr": PublishedWeights(_VIRNET[0], "virnet_sisr_x{scale}.pth", _VIRNET[1],
                                    {"snet_output": "std", "kernel_axes": "ij"}),
}
_SR_FILE = re.compile(r"^virnet_sisr_x([234])\.pth$")


def published_for_file(path) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(model name, options) of a file named as its project publishes it, else None."""
    base = os.path.basename(os.fspath(path))
    match = _SR_FILE.match(base)
    if match:
        return "VIRNet_sisr", {**PUBLISHED["VIRNet_sisr"].options, "scale": int(match.group(1))}
    for name, weights in PUBLISHED.items():
        if weights.file == base:
            return name, dict(weights.options)
    return None
