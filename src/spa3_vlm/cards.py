"""Model and dataset cards, with the licences of what each folder bundles.

Every folder the package writes gets its card from here: PSFM pre-training (:func:`psfm_model_card`, written by
``PSFMTrainer``), conversion (:func:`conversion_model_card`, ``python -m spa3_vlm.conversion``), SFT
(:func:`sft_model_card`, ``Spa3VLMSFTTrainer``), the tiny teachers (:func:`licence_metadata` and
:func:`licences_section`, ``teacher_export``) and the SynthRooms / SynthRooms-QA exports (:func:`dataset_card`,
``python -m spa3_vlm.data.export``). Not imported by the model files: saved folders do not ship it.

The licence rule. A folder bundles *components*: weights it contains or was fine-tuned from (a base VLM, a frozen
VGGT backbone, a semantic teacher). Each is resolved (:func:`resolve`) from :data:`KNOWN_LICENCES` (Hub ids), else
from a local folder's own model card (a card written here lists its components under ``spa3_vlm_components``, so
nesting works: an SFT card sees the VGGT-1B inside a PSFM folder), else it is *unknown*. The folder's licence
(:func:`folder_licence`) is the most restrictive of the bundled ones: ``unknown`` if any is unknown; the single
non-permissive licence if there is one; ``other`` naming all of them if there are several; the strictest permissive
one (Apache-2.0 over BSD over MIT, keeping the others' notices) if all are permissive; MIT, the package's own, if
nothing third-party is bundled. What was only used to make a folder (training data, a teacher that is not saved) is
listed apart and does not enter the rule. ``license=`` overrides the result in the metadata; the card still shows
the computed one and every component.

The licences in :data:`KNOWN_LICENCES` were recorded from the models' Hub cards by third parties, not re-read online
from this machine: every card says so, and a user must check each base's own card.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "COMPONENTS_KEY",
    "KNOWN_LICENCES",
    "Component",
    "FolderLicence",
    "conversion_model_card",
    "data_component",
    "dataset_card",
    "folder_licence",
    "known_licence",
    "licence_metadata",
    "licences_section",
    "psfm_components",
    "psfm_model_card",
    "resolve",
    "sft_model_card",
    "spa3r_encoder_components",
]

PACKAGE_LICENCE = "mit"
COMPONENTS_KEY = "spa3_vlm_components"
# Permissive licences, weakest first: a bundle of only these takes the last one present.
PERMISSIVE = ("mit", "bsd-2-clause", "bsd-3-clause", "apache-2.0")
RECORDED = "recorded from its Hub card by third parties, not re-read from this machine"
_NON_COMMERCIAL_NAMES = {"qwen-research"}

KNOWN_LICENCES: dict[str, dict[str, str]] = {
    "facebook/VGGT-1B": {"license": "cc-by-nc-4.0", "title": "VGGT License", "commercial": "no"},
    "facebook/VGGT-1B-Commercial": {
        "license": "other", "license_name": "vggt-aup-license", "title": "VGGT AUP License, gated",
        "commercial": "yes, except military uses",
    },
    "Qwen/Qwen2.5-VL-3B-Instruct": {
        "license": "other", "license_name": "qwen-research", "title": "Qwen Research License", "commercial": "no",
    },
    "Qwen/Qwen2.5-VL-7B-Instruct": {"license": "apache-2.0", "commercial": "yes"},
    "Qwen/Qwen2.5-VL-72B-Instruct": {
        "license": "other", "license_name": "qwen", "title": "Qwen License", "commercial": "see its licence",
    },
    "Qwen/Qwen3-VL-2B-Instruct": {"license": "apache-2.0", "commercial": "yes"},
    "Qwen/Qwen3-VL-4B-Instruct": {"license": "apache-2.0", "commercial": "yes"},
    "Qwen/Qwen3-VL-8B-Instruct": {"license": "apache-2.0", "commercial": "yes"},
    "hustvl/Spa3-VLM": {"license": "unknown", "note": "the paper's released weights: their licence is not recorded here"},
}  # fmt: skip
# Every repository under a prefix shares its licence.
KNOWN_PREFIXES: dict[str, dict[str, str]] = {
    "facebook/dinov3-": {
        "license": "other", "license_name": "dinov3-license", "title": "DINOv3 License, gated", "commercial": "see its licence",
    },
}  # fmt: skip

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CACHE_SNAPSHOT = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\]")
# Relative teacher paths in configs (hub_configs/...) are relative to the repository, as the training scripts read them.
_REPO = Path(__file__).resolve().parents[2]
_REPO = _REPO if (_REPO / "hub_configs").is_dir() else None


@dataclass(frozen=True)
class Component:
    """One thing a folder bundles (``bundled``) or was made with (training data, a teacher not saved)."""

    role: str
    source: Optional[str]  # Hub id or local path
    license: str = "unknown"  # Hub licence id, "other" or "unknown"
    license_name: Optional[str] = None
    license_link: Optional[str] = None
    title: Optional[str] = None  # the licence's own name, e.g. "VGGT License"
    commercial: str = "unknown"  # "yes", "no", "unknown" or a short condition
    note: str = ""
    part: str = ""  # geometry_backbone | semantic_teacher | spa3r | vlm | checkpoint | data
    bundled: bool = True
    hub: bool = False  # source is a Hub id

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value not in (None, "")}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Component":
        fields = cls.__dataclass_fields__
        return cls(**{key: value for key, value in values.items() if key in fields})


def known_licence(hub_id: str) -> Optional[dict[str, str]]:
    """The recorded licence of a Hub id (case-insensitive, as the Hub), or ``None``."""
    lowered = hub_id.lower()
    for key, entry in KNOWN_LICENCES.items():
        if key.lower() == lowered:
            return entry
    for prefix, entry in KNOWN_PREFIXES.items():
        if lowered.startswith(prefix.lower()):
            return entry
    return None


def _commercial(license: str, license_name: Optional[str]) -> str:
    if license in PERMISSIVE:
        return "yes"
    if license.startswith("cc-by-nc") or license_name in _NON_COMMERCIAL_NAMES:
        return "no"
    return "unknown" if license == "unknown" else "see its licence"


def _local_path(source: str, root: Optional[str]) -> Optional[Path]:
    for path in (Path(source), *(Path(base) / source for base in (root, _REPO) if base is not None)):
        if path.exists():
            return path
    return None


def _read_card(folder: Path):
    from huggingface_hub import ModelCard

    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        return ModelCard.load(readme)
    except Exception:  # a README without valid metadata records nothing we can use
        return None


def resolve(
    source: str, role: str, *, part: str = "", bundled: bool = True, root: Optional[str] = None
) -> list[Component]:
    """The components behind ``source`` (a Hub id, a folder or a file): the recorded licence of a known Hub id; the
    components a card written here lists (each role prefixed with ``role``); the licence a folder's own card
    states; otherwise one *unknown* component saying why. ``root``: where relative paths also live."""
    source = str(source)
    local = _local_path(source, root)
    hub_id = None
    if local is None:
        hub_id = source if _HUB_ID.fullmatch(source) else None
    else:  # a Hub cache snapshot names its repository
        found = _CACHE_SNAPSHOT.search(str(local.resolve()))
        hub_id = f"{found.group(1)}/{found.group(2)}" if found else None
    common = dict(role=role, source=hub_id or source, part=part, bundled=bundled, hub=hub_id is not None)
    entry = known_licence(hub_id) if hub_id else None
    if entry is not None:
        license, name = entry["license"], entry.get("license_name")
        return [
            Component(
                **common, license=license, license_name=name, title=entry.get("title"),
                license_link=f"https://huggingface.co/{hub_id}" if license == "other" else None,
                commercial=entry.get("commercial", _commercial(license, name)), note=entry.get("note", RECORDED),
            )
        ]  # fmt: skip
    if local is not None and local.is_dir():
        card = _read_card(local)
        metadata = card.data.to_dict() if card is not None else {}
        listed = metadata.get(COMPONENTS_KEY)
        listed = listed if isinstance(listed, list) else None
        nested = [Component.from_dict(item) for item in listed or () if isinstance(item, Mapping)]
        # A card written here that bundles third-party parts stands for them; one that bundles none (a teacher trained
        # from scratch) stands for itself, under the licence it states.
        if any(c.bundled for c in nested) or (listed is not None and not metadata.get("license")):
            return [replace(c, role=f"{role} / {c.role}", bundled=bundled and c.bundled) for c in nested]
        if metadata.get("license"):
            license, name, link = str(metadata["license"]), metadata.get("license_name"), metadata.get("license_link")
            return [
                Component(
                    **common, license=license, license_name=name, commercial=_commercial(license, name),
                    license_link=link if str(link).startswith("http") else None,  # a relative link is that folder's
                    note="as its own model card says",
                )
            ]  # fmt: skip
        note = "a local folder without a model card" if card is None else "a local folder whose model card states no licence"
    elif local is not None:
        note = "a local file: nothing here records its licence"
    elif hub_id is not None:
        note = "a Hub model not in spa3_vlm.cards.KNOWN_LICENCES: check its card and pass license="
    else:
        note = "not found here: nothing records its licence"
    return [Component(**common, note=note)]


def data_component(name: str) -> Component:
    """Training data (never bundled): SynthRooms and SynthRooms-QA are made by this package (MIT)."""
    if name.lower().startswith("synthrooms"):
        return Component(
            "training data", name, PACKAGE_LICENCE, commercial="yes", part="data", bundled=False,
            note="procedural, generated by this package",
        )  # fmt: skip
    if name.lower() in ("scannet", "scannetpp"):
        note = "distributed under its own terms of use, which you accepted to download it: check them"
    else:
        note = "not recorded here: check the data set's terms"
    return Component("training data", name, part="data", bundled=False, hub=_is_hub_id(name), note=note)


def spa3r_encoder_components(spa3r_name_or_path: str, root: Optional[str] = None) -> list[Component]:
    """What a Spa3-VLM bundles from a Spa3R checkpoint: the encoder path (frozen VGGT backbone + PSFM-trained
    encoder). A semantic teacher the checkpoint's card lists becomes "used, not bundled" (only PSFM's targets).
    A checkpoint of unknown licence (no card) adds the backbone its ``config.json`` names."""
    role = "Spa3R encoder (frozen)"
    found = resolve(spa3r_name_or_path, role, part="spa3r", root=root)
    if not (len(found) == 1 and found[0].role == role):  # its card listed what it bundles
        return [
            replace(c, bundled=False, role=c.role + " (PSFM targets only)") if c.part == "semantic_teacher" else c
            for c in found
        ]
    if found[0].license != "unknown":  # its own card's licence covers what it holds
        return found
    local = _local_path(str(spa3r_name_or_path), root)
    config = local / "config.json" if local is not None and local.is_dir() else None
    if config is not None and config.is_file():
        backbone = json.loads(config.read_text()).get("vggt_name_or_path")
        if backbone:
            found += resolve(backbone, "Spa3R encoder / frozen VGGT backbone (as its config names it)",
                             part="geometry_backbone", root=root)  # fmt: skip
    return found


def psfm_components(
    config,
    *,
    teachers_loaded: bool = True,
    init_from: Optional[str] = None,
    datasets: Sequence[str] = (),
    root: Optional[str] = None,
) -> list[Component]:
    """Components of a PSFM output (``Spa3RForFieldPrediction``: frozen backbone and semantic teacher included)."""
    components: list[Component] = []
    if init_from:
        components += resolve(init_from, "initial weights (continued pre-training)", part="spa3r", root=root)
    elif teachers_loaded:
        if getattr(config, "vggt_name_or_path", None):
            components += resolve(config.vggt_name_or_path, "frozen VGGT backbone (geo teacher)",
                                  part="geometry_backbone", root=root)  # fmt: skip
        if getattr(config, "semantic_teacher_name_or_path", None):
            components += resolve(config.semantic_teacher_name_or_path, "frozen semantic teacher",
                                  part="semantic_teacher", root=root)  # fmt: skip
    return components + [data_component(name) for name in datasets]


# --------------------------------------------------------------------------------------------------
# The rule and how a card shows it
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderLicence:
    license: str
    license_name: Optional[str]
    license_link: Optional[str]
    commercial: str
    reason: str

    def label(self) -> str:
        return f"`{self.license}`" + (f" (`{self.license_name}`)" if self.license_name else "")


def _named(components: Sequence[Component]) -> str:
    return ", ".join(dict.fromkeys(f"`{c.source}`" if c.source else f"the {c.role}" for c in components))


def folder_licence(components: Sequence[Component]) -> FolderLicence:
    """The most restrictive licence of the bundled components (module doc)."""
    bundled = [c for c in components if c.bundled]
    if not bundled:
        return FolderLicence(PACKAGE_LICENCE, None, None, "yes", "nothing third-party is bundled: the package's own "
                             "licence (the weights are yours: pass license= to choose another)")  # fmt: skip
    unknown = [c for c in bundled if c.license == "unknown"]
    if unknown:
        return FolderLicence("unknown", None, None, "unknown", f"the licence of {_named(unknown)} is not known")
    restrictive: dict[tuple, list[Component]] = {}
    for c in bundled:
        if c.license not in PERMISSIVE:
            restrictive.setdefault((c.license, c.license_name), []).append(c)
    if any(c.commercial == "no" for c in bundled):
        commercial = "no"
    else:
        commercial = "yes" if all(c.commercial == "yes" for c in bundled) else "see the licences below"
    if not restrictive:
        strictest = max({c.license for c in bundled}, key=PERMISSIVE.index)
        return FolderLicence(strictest, None, None, "yes", "every bundled part is permissively licensed: the folder "
                             "takes the strictest of their licences and keeps their notices")  # fmt: skip
    if len(restrictive) == 1:
        (license, name), parts = next(iter(restrictive.items()))
        link = next((c.license_link for c in parts if c.license_link), None)
        return FolderLicence(license, name, link, commercial, f"the licence of {_named(parts)} applies to the whole folder")
    names = sorted({name or license for license, name in restrictive})
    parts = [c for group in restrictive.values() for c in group]
    return FolderLicence("other", "-and-".join(names), "README.md#licences", commercial,
                         f"it bundles parts under several licences ({_named(parts)}): all of them apply")  # fmt: skip


def _licence_cell(c: Component) -> str:
    text = f"`{c.license}`" + (f" (`{c.license_name}`)" if c.license_name else "")
    if c.title:
        text += f", {c.title}"
    return f"[{text}]({c.license_link})" if c.license_link and c.license_link.startswith("http") else text


def _source_cell(c: Component) -> str:
    if not c.source:
        return "-"
    return f"[`{c.source}`](https://huggingface.co/{c.source})" if c.hub else f"`{c.source}`"


def licences_section(
    components: Sequence[Component], chosen: Optional[FolderLicence] = None, ships_code: bool = True
) -> list[str]:
    """Markdown lines of the "Licences" section: the folder's licence and why, then every component."""
    computed = folder_licence(components)
    chosen = chosen or computed
    lines = ["## Licences", ""]
    if chosen == computed:
        lines.append(f"Licence of this folder: **{computed.label()}**; commercial use: **{computed.commercial}**. "
                     f"Why: {computed.reason}.")  # fmt: skip
    else:
        lines.append(f"Licence chosen by the author of this folder: **{chosen.label()}**. Worked out from what it "
                     f"bundles it would be {computed.label()}, commercial use: **{computed.commercial}** (why: "
                     f"{computed.reason}). The components' own licences still apply to their parts.")  # fmt: skip
    lines += [
        "",
        "A folder's licence is the most restrictive licence of the weights it bundles (contains or was fine-tuned "
        "from); a permissive licence (MIT, Apache-2.0) adds only its notice. The licences of Hub models were "
        "recorded from their Hub cards by third parties and were not re-read online when this card was written; "
        "those of local folders come from their own model cards. Check each base model's own card before you use "
        "or share this folder.",
    ]
    bundled = [c for c in components if c.bundled]
    used = [c for c in components if not c.bundled]
    if bundled:
        lines += ["", "| in this folder | source | licence | commercial use | note |", "|---|---|---|---|---|"]
        lines += [f"| {c.role} | {_source_cell(c)} | {_licence_cell(c)} | {c.commercial} | {c.note} |" for c in bundled]
    else:
        lines += ["", "Nothing third-party is bundled in this folder."]
    if used:
        lines += [
            "",
            "Used to make it, not in this folder (their terms can still reach what was made with them: check them):",
            "",
            "| used for | source | licence | note |",
            "|---|---|---|---|",
        ]
        lines += [f"| {c.role} | {_source_cell(c)} | {_licence_cell(c)} | {c.note} |" for c in used]
    if ships_code:
        lines += ["", "The model code in this folder (`*.py`, from the spa3-vlm package) is MIT-licensed."]
    return lines


def licence_metadata(
    components: Sequence[Component],
    license: Optional[str] = None,
    license_name: Optional[str] = None,
    license_link: Optional[str] = None,
) -> tuple[dict, Optional[FolderLicence]]:
    """Card metadata for ``components`` (``license``/``license_name``/``license_link``, ``base_model``: the bundled
    Hub ids, ``spa3_vlm_components``) and the overriding licence, if ``license`` was given."""
    computed = folder_licence(components)
    chosen = None
    if license is not None:
        chosen = FolderLicence(license, license_name, license_link, computed.commercial, "chosen by the author")
    effective = chosen or computed
    bases = list(dict.fromkeys(c.source for c in components if c.bundled and c.hub))
    metadata = {
        "license": effective.license,
        "license_name": effective.license_name,
        "license_link": effective.license_link,
        "base_model": (bases[0] if len(bases) == 1 else bases) or None,
        COMPONENTS_KEY: [c.to_dict() for c in components],
    }
    return metadata, chosen


def _tags(components: Sequence[Component], tags: Sequence[str]) -> list[str]:
    extra = ["non-commercial"] if folder_licence(components).commercial == "no" else []
    return list(dict.fromkeys([*tags, *extra]))


def _model_card(
    components: Sequence[Component], lines: Sequence[str], *, license=None, license_name=None, license_link=None,
    tags: Sequence[str] = (), ships_code: bool = True, **fields,
):
    from huggingface_hub import ModelCard, ModelCardData

    metadata, chosen = licence_metadata(components, license, license_name, license_link)
    data = ModelCardData(**metadata, tags=_tags(components, tags), **fields)
    body = [*lines, "", *licences_section(components, chosen, ships_code=ships_code)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def _is_hub_id(value: Optional[str]) -> bool:
    return bool(value) and not os.path.exists(value) and _HUB_ID.fullmatch(value) is not None


def _settings_table(title: str, values: Optional[Mapping[str, Any]]) -> list[str]:
    if not values:
        return []
    return ["", f"## {title}", "", "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in values.items()]]


# --------------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------------


def psfm_model_card(
    config,
    *,
    model_name: str = "spa3r",
    teachers_loaded: bool = True,
    init_from: Optional[str] = None,
    datasets: Sequence[str] = ("synthrooms",),
    training: Optional[Mapping[str, Any]] = None,
    results: Optional[str] = None,
    root: Optional[str] = None,
    tags: Sequence[str] = (),
    license: Optional[str] = None,
    license_name: Optional[str] = None,
    license_link: Optional[str] = None,
):
    """Card of a PSFM output (``train/pretrain_psfm.py``): what the model is, its teachers, how it was trained,
    its held-out field scores (``results``: :func:`~spa3_vlm.training.field_eval.format_field_table` text)."""
    components = psfm_components(config, teachers_loaded=teachers_loaded, init_from=init_from, datasets=datasets, root=root)
    heads = ", ".join(f"`{h}`" for h in (config.target_heads or {})) or "no"
    random = "random initialisation (no pretrained weights loaded)"
    backbone = f"`{config.vggt_name_or_path}`" if teachers_loaded and config.vggt_name_or_path else random
    lines = [
        f"# {model_name}",
        "",
        "Spa3R (\"Spa3R: Predictive Spatial Field Modeling for 3D Visual Reasoning\", arXiv 2602.21186) pre-trained "
        "with PSFM by `train/pretrain_psfm.py`: a frozen VGGT backbone turns the context views into tokens, a "
        f"Transformer with {config.num_queries} learnable queries compresses them into the latent field "
        f"({config.num_queries} x {config.hidden_size}), and a camera-conditioned decoder predicts the {heads} "
        "features of any view from it.",
        "",
        f"- geometry backbone (frozen): {backbone if not init_from else f'from `{init_from}`'}",
    ]
    if config.semantic_teacher_config is not None:
        teacher = config.semantic_teacher_name_or_path
        teacher = f"`{teacher}`" if teachers_loaded and teacher else random
        lines.append(f"- semantic teacher (frozen): {teacher if not init_from else f'from `{init_from}`'}")
    if init_from:
        lines.append(f"- pre-training continued from `{init_from}`")
    if datasets:
        lines.append(f"- training data: {', '.join(f'`{d}`' for d in datasets)}")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModel",
        "",
        "encoder = AutoModel.from_pretrained(REPO, trust_remote_code=True)  # Spa3RModel; or: import spa3_vlm",
        "latents = encoder(images).latents  # images [batch, views, 3, H, W] -> [batch, queries, hidden]",
        "# the whole field model (decoder, heads, teachers): spa3_vlm.Spa3RForFieldPrediction.from_pretrained(REPO)",
        "```",
    ]
    lines += _settings_table("Training", training)
    if results:
        lines += ["", "## Held-out field scores", "", "```", results.rstrip(), "```"]
    return _model_card(
        components, lines, license=license, license_name=license_name, license_link=license_link,
        tags=["spa3-vlm", "spa3r", "psfm", "spatial-reasoning", "3d", *tags], library_name="transformers",
        pipeline_tag="image-feature-extraction", datasets=[d for d in datasets if _is_hub_id(d)] or None,
    )  # fmt: skip


CONVERSION_KINDS = {
    "spa3_vlm": "the released Spa3-VLM checkpoint (transformers 4.50 layout) converted to this package's "
    "`Spa3VLMForConditionalGeneration` (transformers 5 names; the Spa3R part reduced to its encoder path)",
    "qwen_spa3r": "a new Spa3-VLM: the Qwen VLM below plus the Spa3R encoder of a reference checkpoint and a "
    "zero-initialised gated adapter, so it answers exactly as the Qwen VLM until it is tuned",
    "spa3r_encoder": "the encoder path of a reference Spa3R checkpoint (frozen VGGT aggregator, projection, queries, "
    "encoder): what Spa3-VLM runs",
    "spa3r_field": "a reference Spa3R checkpoint as `Spa3RForFieldPrediction` (encoder, decoder, field heads; the "
    "reference's DINOv3 teacher is not converted)",
}


def conversion_model_card(
    kind: str,
    source: str,
    *,
    out_name: str = "converted",
    source_id: Optional[str] = None,
    qwen: Optional[str] = None,
    backbone: Optional[str] = None,
    has_backbone: bool = True,
    base_models: Sequence[str] = (),
    report: Optional[str] = None,
    command: Optional[str] = None,
    tags: Sequence[str] = (),
    license: Optional[str] = None,
    license_name: Optional[str] = None,
    license_link: Optional[str] = None,
):
    """Card of a ``python -m spa3_vlm.conversion`` output.

    Args:
        kind: one of :data:`CONVERSION_KINDS`. source: the converted checkpoint (path); ``source_id``: its Hub id.
        qwen: the Qwen checkpoint a ``qwen_spa3r`` folder is built on.
        backbone: Hub id / folder of the VGGT weights inside the checkpoint (``None``: not named, so unknown);
            ``has_backbone=False`` when the output holds no VGGT.
        base_models: further Hub ids the checkpoint was made from (e.g. the Qwen base of a released Spa3-VLM).
    """
    if kind not in CONVERSION_KINDS:
        raise ValueError(f"kind must be one of {sorted(CONVERSION_KINDS)}, got {kind!r}")
    named = source_id or str(source)
    components = resolve(named, "converted checkpoint", part="checkpoint")
    if qwen is not None:
        components += resolve(str(qwen), "base VLM", part="vlm")
    if has_backbone:
        if backbone:
            components += resolve(backbone, "frozen VGGT backbone (tensors from the checkpoint)", part="geometry_backbone")
        else:
            components.append(Component("frozen VGGT backbone (tensors from the checkpoint)", None,
                                        part="geometry_backbone", note="origin not named"))  # fmt: skip
    for base in base_models:
        components += resolve(base, "base model named at conversion (--base-model)", part="vlm")
    if kind == "spa3_vlm" and not base_models:  # the released weights were tuned from a Qwen VLM nobody named here
        components.append(Component("Qwen VLM it was tuned from", None, part="vlm", note="not named: pass --base-model"))
    vlm = kind in ("spa3_vlm", "qwen_spa3r")
    lines = [f"# {out_name}", "", f"This folder holds {CONVERSION_KINDS[kind]}.", "", f"- converted from: `{named}`"]
    if qwen is not None:
        lines.append(f"- Qwen VLM: `{qwen}`")
    if has_backbone:
        lines.append(f"- frozen VGGT backbone: {f'`{backbone}`' if backbone else 'origin not named'} (the reference "
                     "Spa3R freezes facebook/VGGT-1B; the conversion checks the tensors' shapes, not their origin)")  # fmt: skip
    lines.append("- the reference implementation's code (hustvl/Spa3R) is MIT-licensed; that says nothing about the "
                 "weights' licence")  # fmt: skip
    if command:
        lines += ["", "Made with:", "", "```bash", command, "```"]
    if report:
        lines += ["", "## Conversion report", "", "```", report.rstrip(), "```"]
    lines += ["", "## Usage", "", "```python"]
    if vlm:
        lines += [
            "from transformers import AutoModelForImageTextToText",
            "",
            "model = AutoModelForImageTextToText.from_pretrained(REPO, trust_remote_code=True)  # or: import spa3_vlm",
            "# processor: spa3_vlm.Spa3VLMProcessor built from the base Qwen processor (see the package README)",
        ]
    else:
        lines += [
            "from transformers import AutoModel",
            "",
            "model = AutoModel.from_pretrained(REPO, trust_remote_code=True)  # or: import spa3_vlm",
        ]
    lines.append("```")
    return _model_card(
        components, lines, license=license, license_name=license_name, license_link=license_link,
        tags=["spa3-vlm", "conversion", *([] if vlm else ["spa3r"]), *tags], library_name="transformers",
        pipeline_tag="image-text-to-text" if vlm else "image-feature-extraction",
    )  # fmt: skip


VLM_FAMILIES = {"spa3_vlm": "Qwen2.5-VL", "spa3_vlm_qwen3": "Qwen3-VL"}
# Spa3-VLM parts a new Spa3R encoder replaces when a Spa3-VLM checkpoint is tuned with another one.
_ENCODER_PARTS = {"spa3r", "geometry_backbone", "semantic_teacher"}


def sft_components(
    base_model: Optional[str],
    spa3r_name_or_path: Optional[str],
    datasets: Sequence[str] = (),
    spatial_branch: bool = True,
    adapter_only: bool = False,
    root: Optional[str] = None,
) -> list[Component]:
    """Components of an SFT output: the base (fine-tuned, or under a LoRA adapter), the Spa3R encoder path, data."""
    components: list[Component] = []
    if base_model:
        role = "base model (this LoRA adapter runs on it)" if adapter_only else "base model (fine-tuned)"
        found = resolve(base_model, role, part="vlm", root=root)
        if spa3r_name_or_path or not spatial_branch:  # a new encoder replaces its own; the ablation drops it
            found = [c for c in found if c.part not in _ENCODER_PARTS]
        components += found
    if spatial_branch and spa3r_name_or_path:
        components += spa3r_encoder_components(spa3r_name_or_path, root=root)
    return components + [data_component(name) for name in datasets]


def sft_model_card(
    model_name: str = "spa3-vlm-sft",
    base_model: Optional[str] = None,
    spa3r_name_or_path: Optional[str] = None,
    datasets: Sequence[str] = (),
    spatial_branch: bool = True,
    lora: Optional[Mapping[str, Any]] = None,
    merged: bool = False,
    training: Optional[Mapping[str, Any]] = None,
    results: Optional[Mapping[str, Any]] = None,
    tags: Sequence[str] = (),
    license: Optional[str] = None,
    license_name: Optional[str] = None,
    license_link: Optional[str] = None,
    vlm_family: Optional[str] = None,
):
    """A ``huggingface_hub.ModelCard`` for a tuned Spa3-VLM (metadata + how to load + training + results + licences).

    ``results``: a ``vsibench_scores`` dict (``overall``, ``tasks``, ``task_counts``) shown in the paper's column
    order. ``lora``: the LoRA settings when the folder is a PEFT adapter (``merged=False``). ``license``: overrides
    the licence worked out from the bundled models (module doc). ``vlm_family``: "Qwen2.5-VL" or "Qwen3-VL".
    """
    from .vsibench import TASK_ORDER

    adapter_only = lora is not None and not merged
    family = vlm_family or "Qwen2.5-VL"
    components = sft_components(base_model, spa3r_name_or_path, datasets, spatial_branch, adapter_only)
    lines = [
        f"# {model_name}",
        "",
        f"Spa3-VLM ({family} whose visual tokens read a frozen Spa3R latent spatial field through a gated "
        "cross-attention adapter) after spatial instruction tuning with TRL's `SFTTrainer`."
        if spatial_branch
        else f"{family} without the Spa3R spatial branch (`spatial_branch=False`), tuned with TRL's `SFTTrainer` "
        "as the ablation of Spa3-VLM.",
        "",
        f"- base model: `{base_model or 'built from a config (random initialisation)'}`",
    ]
    if spatial_branch:
        lines.append(f"- Spa3R encoder (frozen): `{spa3r_name_or_path or 'random initialisation (no pretrained Spa3R)'}`")
    if datasets:
        lines.append(f"- training data: {', '.join(f'`{d}`' for d in datasets)}")
    if lora is not None:
        state = "merged into the weights" if merged else "stored as a PEFT adapter (this folder)"
        settings = ", ".join(f"{k}={v}" for k, v in lora.items())
        lines.append(f"- LoRA on the LLM ({settings}), adapter modules fully trained; {state}")
    lines += ["", "## Usage", "", "```python"]
    if adapter_only:
        lines += [
            "import spa3_vlm  # registers the Spa3-VLM classes",
            "from peft import PeftModel",
            "from spa3_vlm import Spa3VLMForConditionalGeneration, Spa3VLMProcessor",
            "",
            "# BASE: adapter_config.json's base_model_name_or_path",
            "base = Spa3VLMForConditionalGeneration.from_pretrained(BASE)",
            "model = PeftModel.from_pretrained(base, REPO).merge_and_unload()",
            "processor = Spa3VLMProcessor.from_pretrained(REPO)",
        ]
    else:
        lines += [
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            "model = AutoModelForImageTextToText.from_pretrained(REPO, trust_remote_code=True)  # or: import spa3_vlm",
            "processor = AutoProcessor.from_pretrained(REPO, trust_remote_code=True)",
        ]
    lines += [
        "messages = [{'role': 'user', 'content': [{'type': 'image', 'image': frame} for frame in frames]",
        "             + [{'type': 'text', 'text': question}]}]",
        "inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,",
        "                                       return_dict=True, return_tensors='pt')",
        "answer = processor.batch_decode(model.generate(**inputs, max_new_tokens=16)[:, inputs['input_ids'].shape[1]:],",
        "                                skip_special_tokens=True)[0]",
        "```",
    ]
    lines += _settings_table("Training", training)
    if results:
        tasks = results.get("tasks", {})
        counts = results.get("task_counts", {})
        present = [t for t in TASK_ORDER if t in tasks]
        lines += ["", "## Evaluation (VSI-Bench metrics, x100)", ""]
        if results.get("description"):
            lines += [str(results["description"]), ""]
        lines += ["| overall | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
        cells = [f"{100 * results['overall']:.1f}"] + [f"{100 * tasks[t]:.1f} (n={counts.get(t, '?')})" for t in present]
        lines.append("| " + " | ".join(cells) + " |")
    hub_datasets = [d for d in datasets if _is_hub_id(d)]
    relation = None
    if any(c.bundled and c.hub for c in components):  # the Hub's relation to the listed base models
        relation = "adapter" if adapter_only else "finetune"
    return _model_card(
        components, lines, license=license, license_name=license_name, license_link=license_link,
        tags=["spa3-vlm", "spatial-reasoning", "vsi-bench", "trl", "sft", *tags], language="en",
        library_name="peft" if adapter_only else "transformers", pipeline_tag="image-text-to-text",
        datasets=hub_datasets or None, base_model_relation=relation,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Dataset cards
# --------------------------------------------------------------------------------------------------

_DATASETS = {
    "synthrooms": {
        "pretty_name": "SynthRooms",
        "task_categories": ["depth-estimation", "image-segmentation", "image-to-3d"],
        "tags": ["synthetic", "multi-view", "3d", "indoor", "camera-pose", "spa3-vlm"],
        "intro": "Procedural indoor rooms rendered with exact cameras, depth and instance masks by the spa3-vlm package "
        "(`spa3_vlm.data.synthrooms`): box-shaped rooms (3-10 m x 3-10 m x 2.4-3.2 m) with textured floor, walls "
        "and ceiling, 3-12 pieces of furniture standing on the floor without overlap, and a hand-held camera walk "
        "at eye height, ray-cast into RGB, z-depth and instance masks. One row per scene (a short video). It is "
        "the pre-training data of the tiny Spa3R (PSFM) and the scenes of SynthRooms-QA.",
    },
    "synthrooms_qa": {
        "pretty_name": "SynthRooms-QA",
        "task_categories": ["visual-question-answering", "image-text-to-text"],
        "tags": ["synthetic", "spatial-reasoning", "vsi-bench", "3d", "indoor", "spa3-vlm"],
        "intro": "VSI-Bench-style spatial questions with exact answers about SynthRooms scenes (procedural rooms "
        "rendered by the spa3-vlm package), generated by `spa3_vlm.data.synthrooms_qa`: the ten VSI-Bench "
        "question types (eight tasks) in VSI-Bench's wording and answer formats, answered from the renderer's "
        "exact furniture boxes, room size and visibility. One row per question, with the scene's frames and the "
        "question as a TRL chat (`messages`), ready for `SFTTrainer`; scored with the VSI-Bench metrics.",
    },
}
_COLUMNS = {
    "scene_id": "`<split>-<index>`",
    "split": "train, validation or test",
    "seed": "the scene's own seed (`scene_seed(seed, split, index)`)",
    "height": "frame height, pixels",
    "width": "frame width, pixels",
    "images": "the frames of the camera walk (RGB PNG)",
    "depths": "z-depth per frame, metres (exact)",
    "instances": "instance mask per frame: 0 = room shell, k = the object with id k",
    "extrinsics": "world-to-camera 4x4 per frame (OpenCV axes, world z up)",
    "intrinsics": "3x3 pixel intrinsics per frame",
    "hfov_deg": "horizontal field of view, degrees",
    "room_size": "`[w, d, h]`, metres",
    "objects": "furniture boxes: id, category, shape, center (m), size (m), yaw (rad)",
    "visible_objects": "per frame, the sorted ids of the objects it shows",
    "id": "`<scene_id>-q<k>`",
    "dataset": "`synthrooms`",
    "scene_name": "the scene's `scene_id`",
    "question_type": "one of the ten VSI-Bench question types (below)",
    "question": "the question, in VSI-Bench's wording",
    "options": "`A. ...` choices of multiple-choice types; null for numerical types",
    "ground_truth": "the exact answer: the number, or the option letter",
    "frames": "row of the scene in the SynthRooms split the question is about",
    "messages": "TRL chat: user turn = the frames + the VSI-Bench prompt, assistant turn = the ground truth",
}
QUESTION_TYPE_ANSWERS = {
    "object_counting": "number of instances of a category",
    "object_abs_distance": "closest-point distance between two objects' boxes, metres (2 decimals)",
    "object_size_estimation": "longest side of an object's box, centimetres",
    "room_size_estimation": "floor area of the room, square metres (2 decimals)",
    "object_rel_distance": "letter of the category closest to an anchor object",
    "object_rel_direction_easy": "left / right",
    "object_rel_direction_medium": "left / right / back",
    "object_rel_direction_hard": "front-left / front-right / back-left / back-right",
    "route_planning": "the sequence of turns (Turn Left / Turn Right / Turn Back)",
    "obj_appearance_order": "the categories in the order they first appear in the video",
}


def _feature_type(feature) -> str:
    """A short type name of a ``datasets`` feature, e.g. ``list of float32 array (84, 112)``."""
    from datasets import Array2D, Image, List, Value

    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, Array2D):
        return f"{feature.dtype} array {tuple(feature.shape)}"
    if isinstance(feature, List):
        length = f"[{feature.length}]" if feature.length not in (None, -1) else ""
        return f"list{length} of {_feature_type(feature.feature)}"
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{k}: {_feature_type(v)}" for k, v in feature.items()) + "}"
    return type(feature).__name__


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def dataset_card(
    kind: str,
    splits: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    command: str,
    data_files: Mapping[str, str],
):
    """A ``huggingface_hub.DatasetCard`` for an exported SynthRooms (``kind="synthrooms"``) or SynthRooms-QA
    (``"synthrooms_qa"``) folder: metadata (licence, task categories, size, the parquet ``configs``), how it was
    generated (``command``, ``settings``), splits, columns, question types and the licence.

    Args:
        splits: split name -> ``datasets.Dataset``; data_files: split name -> path glob inside the folder.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if kind not in _DATASETS:
        raise ValueError(f"kind must be one of {sorted(_DATASETS)}, got {kind!r}")
    info = _DATASETS[kind]
    qa = kind == "synthrooms_qa"
    rows = sum(len(d) for d in splits.values())
    text = dict(language=["en"], language_creators=["machine-generated"], multilinguality=["monolingual"]) if qa else {}
    data = DatasetCardData(
        license=PACKAGE_LICENCE,
        pretty_name=info["pretty_name"],
        task_categories=info["task_categories"],
        size_categories=[_size_category(rows)],
        annotations_creators=["machine-generated"],
        source_datasets=["original"],
        tags=info["tags"],
        configs=[{"config_name": "default", "data_files": [{"split": s, "path": p} for s, p in data_files.items()]}],
        **text,
    )
    first = next(iter(splits.values()))
    lines = [
        f"# {info['pretty_name']}",
        "",
        info["intro"],
        "",
        "## How it was made",
        "",
        "Generated by the spa3-vlm package, deterministically: every scene depends only on (seed, split, index), "
        "so the splits never share a room and the command below writes the same rows again (the generator "
        "fingerprint changes whenever the generator or renderer code does).",
        "",
        "```bash",
        command,
        "```",
        *_settings_table("Settings", settings),
        "",
        "## Splits",
        "",
    ]
    if qa:
        types = [t for t in QUESTION_TYPE_ANSWERS if any(t in d.unique("question_type") for d in splits.values())]
        counts = {s: Counter(d["question_type"]) for s, d in splits.items()}
        lines += ["| split | questions | scenes |", "|---|---|---|"]
        lines += [f"| {s} | {len(d)} | {len(set(d['scene_name']))} |" for s, d in splits.items()]
    else:
        lines += ["| split | scenes |", "|---|---|"]
        lines += [f"| {s} | {len(d)} |" for s, d in splits.items()]
    lines += ["", "## Columns", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {_feature_type(feature)} | {_COLUMNS.get(name, '')} |" for name, feature in first.features.items()]
    if qa:
        lines += [
            "",
            "## Question types",
            "",
            "| question type | answer | " + " | ".join(splits) + " |",
            "|---|---|" + "---|" * len(splits),
        ]
        lines += [
            f"| `{t}` | {QUESTION_TYPE_ANSWERS[t]} | " + " | ".join(str(counts[s][t]) for s in splits) + " |" for t in types
        ]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        "dataset = load_dataset(FOLDER_OR_HUB_ID)  # a DatasetDict of the splits above",
        "```",
        "",
        "## Licence",
        "",
        "MIT, the licence of the spa3-vlm package that generates it: the rooms, textures, furniture, cameras"
        + (" and questions" if qa else "")
        + " are procedural, made by the package's code; no third-party images, scans, models or text are in it."
        + (" The question wording follows VSI-Bench's question templates (arXiv 2412.14171)." if qa else ""),
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
