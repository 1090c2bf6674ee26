"""Convert reference (hustvl/Spa3R, facebookresearch/vggt) weights into this package's models.

Loading is strict: every key of the source must be used or explicitly allowed to be dropped, and every
parameter of the target must be provided; anything else raises with the offending names.
"""

from .reference import (
    ConversionReport,
    load_reference_checkpoint,
    spa3r_from_reference,
    vggt_config_from_reference,
    vggt_from_reference,
)

__all__ = [
    "ConversionReport",
    "load_reference_checkpoint",
    "spa3r_from_reference",
    "vggt_config_from_reference",
    "vggt_from_reference",
]
