"""Command line: convert reference weights into folders ready for ``push_to_hub``.

    # released Spa3-VLM (transformers 4.50 layout): a folder with config.json + *.safetensors, or files + --config
    python -m spa3_vlm.conversion --spa3-vlm hustvl-Spa3-VLM/ --out spa3-vlm-3b/

    # a Spa3R Lightning checkpoint on a Qwen2.5-VL or Qwen3-VL checkpoint: a fresh Spa3-VLM (adapter = identity)
    python -m spa3_vlm.conversion --spa3r spa3r.ckpt --qwen Qwen2.5-VL-3B-Instruct/ --out spa3-vlm-init/
    python -m spa3_vlm.conversion --spa3r spa3r.ckpt --qwen Qwen3-VL-4B-Instruct/ --out spa3-vlm-qwen3-init/

    # Spa3R only: the encoder (what the VLM runs) or, with --field-model, encoder + decoder + heads
    python -m spa3_vlm.conversion --spa3r spa3r.ckpt --out spa3r-base/ [--field-model]

``--spa3r-config`` is a ``Spa3RConfig`` JSON (e.g. ``hub_configs/spa3r-base/config.json``) describing the Spa3R
inside the checkpoint; by default its sizes are read off the tensors with VGGT-1B as the backbone.

Every output gets a model card (README.md, ``spa3_vlm.cards.conversion_model_card``): the source, the conversion
report and the licences of what the folder bundles. ``--source-id`` names the checkpoint's Hub id and
``--base-model`` the Hub ids it was made from (e.g. the Qwen base of a released Spa3-VLM); what is not named has an
unknown licence, and so has the folder, unless ``--license`` (``--license-name``, ``--license-link``) sets it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spa3_vlm.conversion", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spa3-vlm", nargs="+", metavar="PATH", help="released Spa3-VLM folder, or its weight files")
    source.add_argument("--spa3r", metavar="CKPT", help="Spa3R Lightning / reference checkpoint (.ckpt, .pt, .safetensors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="the Spa3-VLM checkpoint's config.json when --spa3-vlm lists files")
    parser.add_argument("--qwen", help="with --spa3r: Qwen2.5-VL or Qwen3-VL folder (or hub id) to build a Spa3-VLM on")
    parser.add_argument("--spa3r-config", help="Spa3RConfig JSON of the Spa3R in the checkpoint")
    parser.add_argument("--field-model", action="store_true", help="with --spa3r alone: keep decoder and field heads")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the saved weights (default: the source's)")
    card = parser.add_argument_group("model card")
    card.add_argument("--source-id", help="Hub id of the converted checkpoint (its licence is looked up)")
    card.add_argument("--base-model", nargs="+", default=[], metavar="HUB_ID", help="Hub ids the checkpoint was made from")
    card.add_argument("--license", help="licence of the folder (a Hub licence id); default: worked out from what it bundles")
    card.add_argument("--license-name", help="with --license other: its short name")
    card.add_argument("--license-link", help="with --license other: a link to its text")
    return parser


def _spa3r_config(path):
    if path is None:
        return None
    from ..configuration_spa3r import Spa3RConfig

    values = json.loads(Path(path).read_text())
    values.pop("model_type", None)
    return Spa3RConfig(**values)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.spa3_vlm and (args.qwen or args.field_model):
        raise SystemExit("--qwen and --field-model go with --spa3r, not --spa3-vlm")
    if args.qwen and args.field_model:
        raise SystemExit("--field-model writes a Spa3R-only folder: drop --qwen or --field-model")
    # The model card's own inputs (README.md of the output; vlm.write_conversion_card).
    card = dict(
        source_id=args.source_id, base_models=args.base_model, command="python -m spa3_vlm.conversion " + shlex.join(argv),
        license=args.license, license_name=args.license_name, license_link=args.license_link,
    )  # fmt: skip
    try:
        report = _convert(args, card)
    except (ValueError, FileNotFoundError) as error:  # bad input: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}\n{report}")
    return 0


def _convert(args, card: dict):
    from . import vlm
    from .reference import load_reference_checkpoint, spa3r_from_reference

    spa3r_config = _spa3r_config(args.spa3r_config)
    dtype = DTYPES[args.dtype] if args.dtype else None
    out = Path(args.out)
    if args.spa3_vlm:
        _, report = vlm.convert_spa3_vlm(
            args.spa3_vlm, out, config_path=args.config, spa3r_config=spa3r_config, dtype=dtype, card=card
        )
    elif args.qwen:
        kwargs = {"dtype": dtype} if dtype else {}
        _, report = vlm.combine_qwen_and_spa3r(args.qwen, args.spa3r, out, spa3r_config=spa3r_config, card=card, **kwargs)
    else:
        state = load_reference_checkpoint(args.spa3r)
        if args.field_model:
            extra = {}
            if spa3r_config is not None:
                extra = dict(vlm.spa3r_constructor_args(spa3r_config), vggt_config=spa3r_config.vggt_config)
            model, report = spa3r_from_reference(state, return_report=True, **extra)
        else:
            model, report = vlm.spa3r_encoder_from_reference(state, spa3r_config, return_report=True)
        if dtype:
            model = model.to(dtype)
        model.save_pretrained(str(out))
        kind = "spa3r_field" if args.field_model else "spa3r_encoder"
        named = spa3r_config.vggt_name_or_path if spa3r_config is not None else None  # the field model's config drops it
        vlm.write_conversion_card(out, kind, args.spa3r, model, report, spa3r_config is not None, backbone=named, **card)
    return report


if __name__ == "__main__":
    sys.exit(main())
