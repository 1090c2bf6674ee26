"""Build the tiny offline Spa3-VLM tokenizer + processor files in ``hub_configs/spa3-vlm-tiny/`` (Qwen2.5-VL) and
``hub_configs/spa3-vlm-qwen3-tiny/`` (Qwen3-VL: the same tokenizer, Qwen3-VL's 16-pixel patches and image mean/std).

A byte-level BPE (Qwen2's pre-tokenizer and normaliser, so ``Qwen2Tokenizer`` reloads it unchanged) is trained
on a small generated corpus of spatial-QA English (VSI-Bench prompt sentences, object names, directions,
numbers, option letters). Deterministic: the corpus comes from a seeded ``random.Random`` and the BPE trainer
is deterministic for a fixed input, so re-running reproduces the committed files byte for byte.

Writes tokenizer.json, tokenizer_config.json, chat_template.jinja and processor_config.json (no copied code,
no auto_map); leaves any other file (e.g. the model's config.json) alone.

Usage: ``python train/build_tiny_tokenizer.py [--base qwen2_5_vl|qwen3_vl] [--out FOLDER] [--vocab-size 2000]``
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from spa3_vlm.processing_spa3_vlm import (
    CHAT_TEMPLATES,
    SPECIAL_TOKENS,
    Spa3VLMProcessor,
    build_qwen_image_processor,
    special_token_ids,
)
from spa3_vlm.processing_spa3r import Spa3RImageProcessor


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = {"qwen2_5_vl": REPO_ROOT / "hub_configs" / "spa3-vlm-tiny", "qwen3_vl": REPO_ROOT / "hub_configs" / "spa3-vlm-qwen3-tiny"}
# The bases' vision towers: patch size and image normalisation (Qwen2.5-VL: CLIP's mean/std; Qwen3-VL: 0.5).
QWEN_VISION = {
    "qwen2_5_vl": {"patch_size": 14},
    "qwen3_vl": {"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}
SEED = 20260306

# Tiny geometry/Qwen sizes: 70-px-wide frames (the tiny VGGT fixture's 56x70 for 4:3 input), Qwen frames of 4 to
# 16 merged patches (2x2 patches each; 56x56 -> 4 image tokens per frame on Qwen2.5-VL).
TINY_GEOMETRY = {"target_width": 70, "max_height": 70, "patch_size": 14}
TINY_MIN_MERGED, TINY_MAX_MERGED = 4, 16

OBJECTS = [
    "chair", "table", "sofa", "bed", "lamp", "tv", "cabinet", "plant", "bookshelf", "refrigerator",
    "door", "window", "desk", "stool", "toilet", "sink", "bathtub", "shower", "mirror", "pillow",
    "blanket", "curtain", "rug", "carpet", "shelf", "counter", "stove", "oven", "microwave", "dishwasher",
    "washer", "dryer", "monitor", "keyboard", "laptop", "computer", "printer", "speaker", "fan", "heater",
    "radiator", "backpack", "bag", "box", "basket", "bucket", "trash can", "bin", "clock", "picture",
    "painting", "poster", "whiteboard", "board", "nightstand", "dresser", "wardrobe", "closet", "ottoman",
    "bench", "couch", "armchair", "coffee table", "dining table", "kitchen cabinet", "towel", "vase",
    "bottle", "cup", "mug", "bowl", "plate", "kettle", "toaster", "piano", "guitar", "bicycle", "shoe",
    "suitcase", "telephone", "light", "ceiling light", "fireplace", "stairs", "column", "pipe",
]
ROOMS = ["room", "bedroom", "kitchen", "living room", "bathroom", "office", "hallway", "dining room", "studio"]
DIRECTIONS = ["left", "right", "front", "back", "front-left", "front-right", "back-left", "back-right"]
COLORS = ["red", "blue", "green", "white", "black", "brown", "gray", "yellow", "wooden", "metal"]
UNITS = ["meters", "meter", "centimeters", "square meters"]
EXTRA_WORDS = (
    "above below behind beside between near far closest farthest nearest largest smallest longest shortest "
    "tallest first second third fourth last next after before until while during corner wall floor ceiling "
    "center middle side edge top bottom inside outside along across toward towards facing standing sitting "
    "walking turning turn go forward backward straight around distance length width height size depth area "
    "volume approximately about exactly roughly estimate measured measuring point points object objects "
    "category categories appearance order route plan planning number count counting many much how what which "
    "where when who why whose whom there here these those this that they them their it its is are was were be "
    "been being have has had do does did can could would should will shall may might must not no yes and or "
    "but if then else so because since although though however therefore also only just even still again "
    "video frames frame scene camera view views image images picture answer question questions options option "
    "letter choices given directly single word phrase please using use the a an of to in on at by for with "
    "from into onto over under up down out off one two three four five six seven eight nine ten eleven twelve "
    "twenty thirty hundred thousand zero half quarter double triple meters units unit total sum difference "
    "relative absolute direction position location place spot area region space spatial reasoning geometry "
    "room-size object-size abs-distance rel-distance rel-direction appearance-order route-plan counting "
    "robot person people someone you your I me my we our he she his her observer viewpoint perspective "
    "stand face look see watch notice find locate identify describe explain compare measure count move "
    "navigate reach arrive leave enter exit pass cross follow stop start begin end finish return"
).split()
GENERAL_WORDS = (
    "house apartment building home space furniture appliance kitchenware decoration storage lighting seating "
    "sleeping cooking cleaning washing reading working playing eating drinking resting sleeping opening closing "
    "open closed empty full small large big tiny huge long short tall low high wide narrow thick thin heavy "
    "light dark bright clean dirty new old modern classic soft hard round square rectangular circular flat "
    "curved vertical horizontal diagonal parallel perpendicular opposite adjacent nearby distant visible hidden "
    "partially fully mostly nearly almost quite very rather fairly slightly clearly probably possibly likely "
    "unlikely certain uncertain correct incorrect true false right wrong same different similar another other "
    "each every all both either neither none some any several few more most less least fewer better best worse "
    "worst good bad great little own such than too enough instead rather already always never often sometimes "
    "usually rarely once twice time times moment second seconds minute minutes hour hours day days year years "
    "morning evening night today yesterday tomorrow now later soon early late begin beginning ending middle "
    "north south east west upper lower inner outer front-facing back-facing left-hand right-hand clockwise "
    "counterclockwise degrees degree angle angles rotate rotation rotated translation translated coordinate "
    "coordinates axis axes origin vector vectors matrix depth map maps field fields latent feature features "
    "model models predict prediction predicted target targets context encoder decoder token tokens patch "
    "patches pixel pixels resolution width-wise height-wise metric metrics score scores accuracy relative "
    "mean average maximum minimum threshold error errors value values result results test train training "
    "evaluation benchmark dataset sample samples example examples label labels note notes step steps action "
    "actions instruction instructions follow following previous current final initial start stop turn-left "
    "turn-right go-forward reach-the reaching walked walks walk moved moves moving looked looks looking "
    "stood stands placed place places put puts putting hung hangs hanging lying lies sits sat leaning leans "
    "attached mounted fixed stacked piled arranged located situated positioned oriented aligned centered "
    "window-sill doorway entrance exit passage corridor staircase balcony patio garden garage basement attic "
    "countertop cupboard drawer drawers handle knob switch outlet socket cable wire cord remote controller "
    "screen display projector camera tripod frame frames photo photos artwork sculpture statue figure toy toys "
    "book books magazine newspaper paper papers folder file files pen pencil notebook calendar map globe "
    "lamp-shade bulb candle flower flowers tree leaf leaves pot pots soil water glass glasses jar jars can cans "
    "food fruit apple banana orange bread cake snack drink coffee tea milk juice wine beer bottle-opener "
    "fork knife spoon spoons chopsticks napkin tray pan pans lid lids sponge soap shampoo toothbrush toothpaste "
    "tissue tissues paper-towel hanger hangers clothes shirt pants jacket coat hat cap scarf glove gloves sock "
    "socks boot boots slipper slippers umbrella helmet ball racket skateboard scooter stroller crib cradle "
    "mattress headboard footboard bunk bedframe sheet sheets quilt duvet cushion cushions mat mats doormat"
).split()
PROMPT_SENTENCES = [
    "These are frames of a video.",
    "Please answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Options:",
    "You are a helpful assistant.",
]


def _plural(name: str) -> str:
    if name.endswith(("s", "sh", "ch", "x")):
        return name + "es"
    if name.endswith("y") and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def _number(rng: random.Random) -> str:
    return rng.choice([str(rng.randint(0, 20)), f"{rng.uniform(0.1, 12.0):.1f}", f"{rng.uniform(0.5, 60.0):.2f}"])


def build_corpus(num_questions: int = 6000, seed: int = SEED) -> list[str]:
    """Spatial-QA-like English in the VSI-Bench style; deterministic for a given seed."""
    rng = random.Random(seed)
    corpus = list(PROMPT_SENTENCES) * 20
    corpus += [" ".join(rng.sample(EXTRA_WORDS, 12)) for _ in range(400)]
    corpus += [" ".join(rng.sample(GENERAL_WORDS, 12)) for _ in range(1200)]
    corpus += [f"{name} {_plural(name)} the {name} a {name}" for name in OBJECTS]
    for _ in range(num_questions):
        a, b, c, d = rng.sample(OBJECTS, 4)
        room, direction, unit = rng.choice(ROOMS), rng.choice(DIRECTIONS), rng.choice(UNITS)
        letters = ["A", "B", "C", "D"]
        options = "\n".join(f"{letter}. {name}" for letter, name in zip(letters, rng.sample(OBJECTS, 4)))
        question = rng.choice(
            [
                f"How many {_plural(a)} are in this {room}?",
                f"What is the distance between the {a} and the {b} (in {unit})?",
                f"What is the size of this {room} (in square meters)? If multiple rooms are shown, estimate the "
                "size of the combined space.",
                f"What is the length of the longest dimension (length, width, or height) of the {a}, measured in "
                "centimeters?",
                f"Measuring from the closest point of each object, which of these objects ({a}, {b}, {c}, {d}) "
                f"is the closest to the {rng.choice(OBJECTS)}?",
                f"If I am standing by the {a} and facing the {b}, is the {c} to my left, right, or back? An object "
                "is to my back if I would have to turn at least 135 degrees in order to face it.",
                f"If I am standing by the {a} and facing the {b}, is the {c} to my front-left, front-right, "
                "back-left, or back-right?",
                f"What will be the first-time appearance order of the following categories in the video: {a}, {b}, "
                f"{c}, {d}?",
                f"You are a robot beginning at the {a} facing the {b}. You want to navigate to the {c}. You will "
                f"perform the following actions: 1. Go forward until the {b}. 2. Turn {direction}. 3. Go forward "
                f"until the {c}.",
                f"The {rng.choice(COLORS)} {a} is {_number(rng)} {unit} to the {direction} of the {b}.",
            ]
        )
        if rng.random() < 0.5:
            text = (
                f"{PROMPT_SENTENCES[0]}\n{question}\nOptions:\n{options}\n{PROMPT_SENTENCES[2]}"
            )
            answer = rng.choice(letters)
        else:
            text = f"{PROMPT_SENTENCES[0]}\n{question}\n{PROMPT_SENTENCES[1]}"
            answer = rng.choice([_number(rng), a, direction, f"{_number(rng)} {unit}"])
        corpus.append(text)
        corpus.append(answer)
    return corpus


def train_tokenizer(corpus: list[str], vocab_size: int = 2000) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen2's exact pre-tokenisation, wrapped as a ``Qwen2Tokenizer``."""
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(merge) for merge in model["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    # All seven stay atomic and are dropped by decode(skip_special_tokens=True).
    tokenizer.add_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS], special_tokens=True
    )
    tokenizer.model_max_length = 32768
    return tokenizer


def build_processor(tokenizer, base: str = "qwen2_5_vl") -> Spa3VLMProcessor:
    vision = QWEN_VISION[base]
    merged = (2 * vision["patch_size"]) ** 2  # pixels of one merged (2x2-patch) token
    return Spa3VLMProcessor(
        image_processor=build_qwen_image_processor(
            min_pixels=merged * TINY_MIN_MERGED, max_pixels=merged * TINY_MAX_MERGED, **vision
        ),
        tokenizer=tokenizer,
        geometry_image_processor=Spa3RImageProcessor(**TINY_GEOMETRY),
        chat_template=CHAT_TEMPLATES[base],
        num_video_frames=8,
    )


def save_data_only(processor: Spa3VLMProcessor, folder) -> None:
    """Save without copied processing_*.py files or auto_map entries: committed files stay data only, so no stale
    code copy can hide in them. Any other save_pretrained (training outputs, Hub exports) includes both for
    AutoProcessor + trust_remote_code."""
    processor._auto_class = None
    processor.geometry_image_processor._auto_class = None
    processor.save_pretrained(str(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=sorted(QWEN_VISION), default="qwen2_5_vl")
    parser.add_argument("--out", type=Path, default=None, help="default: the base's hub_configs/spa3-vlm-*tiny folder")
    parser.add_argument("--vocab-size", type=int, default=2000)
    args = parser.parse_args()
    out = args.out or DEFAULT_OUT[args.base]
    tokenizer = train_tokenizer(build_corpus(), vocab_size=args.vocab_size)
    processor = build_processor(tokenizer, args.base)
    out.mkdir(parents=True, exist_ok=True)
    save_data_only(processor, out)
    print(f"wrote {out}: vocab {len(tokenizer)}, special ids {special_token_ids(tokenizer)}")


if __name__ == "__main__":
    main()
