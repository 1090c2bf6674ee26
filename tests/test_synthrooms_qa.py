"""SynthRooms-QA: every VSI-Bench question type, answers recomputed independently, formats and determinism."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from spa3_vlm.data import (
    intrinsics_from_fov,
    load_synthrooms,
    look_extrinsics,
    project_points,
)
from spa3_vlm.data.synthrooms_qa import (
    box_distance,
    build_synthrooms_qa,
    synthrooms_qa_records,
)
from spa3_vlm.evaluation.scoring import vsibench_scores
from spa3_vlm.vsibench import (
    NUMERICAL_TYPES,
    QUESTION_TYPES,
    TASK_ORDER,
    build_vsibench_prompt,
    validate_record,
    vsibench_messages,
)

SCENE_ARGS = dict(num_scenes=3, frames_per_scene=8, image_size=(84, 112))
VSIBENCH_FIELDS = {"id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth"}
DIRECTION_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")


@pytest.fixture(scope="module")
def scenes():
    return load_synthrooms(**SCENE_ARGS)


@pytest.fixture(scope="module")
def rows(scenes):
    return scenes.select_columns(["scene_id", "seed", "room_size", "objects", "visible_objects"]).to_list()


@pytest.fixture(scope="module")
def all_records(scenes):
    return synthrooms_qa_records(scenes, seed=0, per_scene=None)


def _of_type(records, question_type):
    found = [r for r in records if r["question_type"] == question_type]
    assert found, f"no {question_type} record generated"
    return found


def _option_text(record, letter):
    (text,) = [o[3:] for o in record["options"] if o.startswith(letter + ". ")]
    return text


def _answer_text(record):
    return _option_text(record, record["ground_truth"])


def _unique_object(row, category):
    (obj,) = [o for o in row["objects"] if o["category"] == category]
    return obj


# ---------------------------------------------------------------- independent geometry (not the module's)


def _corners(obj):
    c, s = math.cos(obj["yaw"]), math.sin(obj["yaw"])
    hx, hy = obj["size"][0] / 2, obj["size"][1] / 2
    local = [(hx, hy), (-hx, hy), (-hx, -hy), (hx, -hy)]
    return np.array([(obj["center"][0] + c * x - s * y, obj["center"][1] + s * x + c * y) for x, y in local])


def _boundary_samples(obj, per_edge=500):
    corners = _corners(obj)
    t = np.linspace(0.0, 1.0, per_edge, endpoint=False)[:, None]
    return np.concatenate([corners[i] + t * (corners[(i + 1) % 4] - corners[i]) for i in range(4)])


def _brute_distance(a, b, per_edge=500):
    """Footprint distance by dense boundary sampling (objects stand on the floor: no vertical gap)."""
    pa, pb = _boundary_samples(a, per_edge), _boundary_samples(b, per_edge)
    return float(np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min())


def _angle(origin, toward, query):
    """Degrees from toward to query around origin, counter-clockwise (left) positive, via complex numbers."""
    f = complex(toward[0] - origin[0], toward[1] - origin[1])
    q = complex(query[0] - origin[0], query[1] - origin[1])
    return math.degrees(np.angle(q / f))


def _expected_direction(angle, question_type):
    side = "left" if angle > 0 else "right"
    if question_type == "object_rel_direction_easy":
        return side
    if question_type == "object_rel_direction_medium":
        return "back" if abs(angle) >= 135 else side
    return ("front-" if abs(angle) < 90 else "back-") + side


# ---------------------------------------------------------------- coverage, schema, determinism


def test_every_question_type_generated_in_vsibench_schema(scenes, rows, all_records):
    assert {r["question_type"] for r in all_records} == set(QUESTION_TYPES)
    per_scene = synthrooms_qa_records(scenes, seed=0)  # default: at most 10 per scene, round-robin over types
    assert {r["question_type"] for r in per_scene} == set(QUESTION_TYPES)
    for index in range(len(rows)):
        assert 0 < sum(r["frames"] == index for r in per_scene) <= 10
    ids = [r["id"] for r in all_records]
    assert len(ids) == len(set(ids))
    for record in all_records:
        assert set(record) == VSIBENCH_FIELDS | {"frames"}
        assert record["dataset"] == "synthrooms"
        assert record["scene_name"] == rows[record["frames"]]["scene_id"]
        assert isinstance(record["ground_truth"], str)
        if record["question_type"] in NUMERICAL_TYPES:
            assert record["options"] is None
            float(record["ground_truth"])
        else:
            letters = [o.split(". ", 1)[0] for o in record["options"]]
            assert letters == list("ABCD"[: len(letters)]) and len(letters) >= 2
            assert record["ground_truth"] in letters
            texts = [o.split(". ", 1)[1] for o in record["options"]]
            assert len(set(texts)) == len(texts)


def test_deterministic_and_seed_dependent(scenes, all_records):
    assert synthrooms_qa_records(scenes, seed=0, per_scene=None) == all_records
    other = synthrooms_qa_records(scenes, seed=1, per_scene=None)
    assert other != all_records
    # The answers are facts about the scene: the same question gets the same answer text under any seed.
    answers = {}
    for record in all_records + other:
        if record["question_type"] in NUMERICAL_TYPES:
            key, answer = (record["scene_name"], record["question"]), record["ground_truth"]
        elif record["question_type"] in ("obj_appearance_order", "object_rel_distance", "route_planning"):
            continue  # the question text depends on the sampled options
        else:
            key, answer = (record["scene_name"], record["question"]), _answer_text(record)
        assert answers.setdefault(key, answer) == answer


def test_restricting_question_types_keeps_their_questions(scenes, all_records):
    only = synthrooms_qa_records(scenes, seed=0, per_scene=None, question_types=["object_counting", "route_planning"])
    expected = [r for r in all_records if r["question_type"] in ("object_counting", "route_planning")]
    def key(rs):
        return sorted((r["scene_name"], r["question"], r["options"], r["ground_truth"]) for r in rs)

    assert key(only) == key(expected)


def test_records_are_consumable_by_the_metric(all_records):
    scored = vsibench_scores([{**r, "prediction": r["ground_truth"]} for r in all_records])
    assert scored["overall"] == 1.0
    assert list(scored["tasks"]) == list(TASK_ORDER) and scored["missing_tasks"] == []
    wrong = []
    for r in all_records:
        if r["question_type"] in NUMERICAL_TYPES:
            prediction = str(float(r["ground_truth"]) * 3 + 1)
        else:
            prediction = next(o[0] for o in r["options"] if o[0] != r["ground_truth"])
        wrong.append({**r, "prediction": prediction})
    assert vsibench_scores(wrong)["overall"] == 0.0


# ---------------------------------------------------------------- answers recomputed from the ground truth


def test_counting_answers(rows, all_records):
    for record in _of_type(all_records, "object_counting"):
        category = re.fullmatch(r"How many (.+)\(s\) are in this room\?", record["question"]).group(1)
        row = rows[record["frames"]]
        instances = [o["id"] for o in row["objects"] if o["category"] == category]
        seen = {k for frame in row["visible_objects"] for k in frame}
        assert int(record["ground_truth"]) == len(instances) >= 1
        assert set(instances) <= seen
    # One question per count present in a scene: the answer is not guessable from the question alone.
    answers = Counter(r["ground_truth"] for r in _of_type(all_records, "object_counting"))
    assert len(answers) >= 2 and max(answers.values()) <= 0.6 * sum(answers.values()), answers
    per_scene = Counter((r["frames"], r["ground_truth"]) for r in _of_type(all_records, "object_counting"))
    assert max(per_scene.values()) == 1  # one question per count
    counts_per_scene = Counter(frames for frames, _ in per_scene)
    assert min(counts_per_scene.values()) >= 2  # a scene with a single count asks nothing


def test_size_and_room_answers(rows, all_records):
    for record in _of_type(all_records, "object_size_estimation"):
        category = re.search(r"dimension \(length, width, or height\) of the (.+), measured", record["question"]).group(1)
        obj = _unique_object(rows[record["frames"]], category)
        assert record["ground_truth"] == str(round(max(obj["size"]) * 100))
    for record in _of_type(all_records, "room_size_estimation"):
        width, depth, _ = rows[record["frames"]]["room_size"]
        assert float(record["ground_truth"]) == pytest.approx(round(width * depth, 2), abs=1e-9)
        assert "If multiple rooms are shown" in record["question"]


def test_abs_distance_answers(rows, all_records):
    pattern = r"what is the direct distance between the (.+) and the (.+) \(in meters\)\?"
    for record in _of_type(all_records, "object_abs_distance"):
        first, second = re.search(pattern, record["question"]).groups()
        row = rows[record["frames"]]
        a, b = _unique_object(row, first), _unique_object(row, second)
        assert float(record["ground_truth"]) == pytest.approx(_brute_distance(a, b), abs=0.01)
        seen = {k for frame in row["visible_objects"] for k in frame}
        assert {a["id"], b["id"]} <= seen


def test_box_distance_exact_cases():
    def box(x, y, sx, sy, yaw=0.0, z=0.5, sz=1.0):
        return {"center": [x, y, z], "size": [sx, sy, sz], "yaw": yaw}

    assert box_distance(box(1.0, 1.0, 1.0, 1.0), box(3.0, 1.2, 1.0, 1.0)) == pytest.approx(1.0)  # face to face
    assert box_distance(box(0.0, 0.0, 1.0, 1.0), box(2.0, 3.0, 1.0, 1.0)) == pytest.approx(math.hypot(1.0, 2.0))
    # A 45° diamond's vertex (at x = 1 + sqrt(2)/2) facing a box edge at x = 3.
    diamond = box(1.0, 0.0, 1.0, 1.0, yaw=math.pi / 4)
    assert box_distance(diamond, box(3.5, 0.0, 1.0, 4.0)) == pytest.approx(2.0 - math.sqrt(0.5))
    assert box_distance(box(0.0, 0.0, 2.0, 2.0), box(0.5, 0.5, 1.0, 1.0)) == 0.0  # overlapping
    # A shelf hanging above a stool: horizontal and vertical gaps combine.
    stool, shelf = box(0.0, 0.0, 1.0, 1.0, z=0.25, sz=0.5), box(1.5, 0.0, 1.0, 1.0, z=2.0, sz=1.0)
    assert box_distance(stool, shelf) == pytest.approx(math.hypot(0.5, 1.0))


def test_rel_distance_answers(rows, all_records):
    pattern = r"which of these objects \((.+)\) is the closest to the (.+)\?\n"
    for record in _of_type(all_records, "object_rel_distance"):
        listed, anchor_category = re.search(pattern, record["question"]).groups()
        choices = listed.split(", ")
        assert [o[3:] for o in record["options"]] == choices
        row = rows[record["frames"]]
        anchor = _unique_object(row, anchor_category)
        distance = {
            c: min(_brute_distance(anchor, o, per_edge=150) for o in row["objects"] if o["category"] == c)
            for c in choices
        }
        ranked = sorted(distance.values())
        assert distance[_answer_text(record)] == ranked[0]
        assert ranked[1] - ranked[0] >= 0.15 - 0.02


def test_appearance_order_answers(rows, all_records):
    pattern = r"What will be the first-time appearance order of the following categories in the video: (.+)\?"
    for record in _of_type(all_records, "obj_appearance_order"):
        listed = re.fullmatch(pattern, record["question"]).group(1).split(", ")
        row = rows[record["frames"]]
        category_of = {o["id"]: o["category"] for o in row["objects"]}
        first = {}
        for frame, ids in enumerate(row["visible_objects"]):
            for k in ids:
                first.setdefault(category_of[k], frame)
        assert len({first[c] for c in listed}) == len(listed) >= 3
        assert _answer_text(record) == ", ".join(sorted(listed, key=first.get))
        assert all(sorted(o[3:].split(", ")) == sorted(listed) for o in record["options"])


def test_direction_answers_on_generated_scenes(rows, all_records):
    pattern = r"If I am standing by the (.+) and facing the (.+), is the (.+) to (?:the left or|my)"
    for question_type in DIRECTION_TYPES:
        for record in _of_type(all_records, question_type):
            names = re.match(pattern, record["question"]).groups()
            p, f, q = (_unique_object(rows[record["frames"]], n)["center"] for n in names)
            angle = _angle(p, f, q)
            assert _answer_text(record) == _expected_direction(angle, question_type)
            boundaries = {"object_rel_direction_easy": (0, 180), "object_rel_direction_medium": (0, 135)}
            boundaries = boundaries.get(question_type, (0, 90, 180))
            assert min(abs(abs(angle) - b) for b in boundaries) >= 15


def _route_answer(start, facing, stops):
    turns, here, heading = [], start, complex(facing[0] - start[0], facing[1] - start[1])
    for stop in stops:
        leg = complex(stop[0] - here[0], stop[1] - here[1])
        angle = math.degrees(np.angle(leg / heading))
        turns.append("Turn Back" if abs(angle) >= 150 else ("Turn Left" if angle > 0 else "Turn Right"))
        assert 30 <= abs(angle) <= 120 or abs(angle) >= 150
        here, heading = stop, leg
    return ", ".join(turns)


def test_route_answers_on_generated_scenes(rows, all_records):
    for record in _of_type(all_records, "route_planning"):
        question = record["question"]
        pattern = r"You are a robot beginning at the (.+) facing the (.+)\. You want to navigate to the (.+?)\. "
        start, facing, destination = re.match(pattern, question).groups()
        stops = re.findall(r"Go forward until the (.+?)(?= \d+\. |\. You have reached)", question)
        assert stops[-1] == destination and len(re.findall(r"\d+\. \[please fill in\]", question)) == len(stops)
        row = rows[record["frames"]]
        xy = lambda name: _unique_object(row, name)["center"][:2]  # noqa: E731
        assert _answer_text(record) == _route_answer(xy(start), xy(facing), [xy(s) for s in stops])


# ---------------------------------------------------------------- hand-made scenes


def _hand_row(objects, visible=None, name="hand-0"):
    objects = [
        {"id": k + 1, "category": c, "shape": "box", "center": [x, y, 0.4], "size": [0.5, 0.5, 0.8], "yaw": 0.0}
        for k, (c, x, y) in enumerate(objects)
    ]
    if visible is None:
        visible = [[o["id"] for o in objects]]
    return {"scene_id": name, "seed": -1, "room_size": [6.0, 6.0, 2.8], "objects": objects, "visible_objects": visible}


def _answers(records):
    return {(r["question_type"], r["question"]): _answer_text(r) for r in records}


def test_direction_by_hand():
    # Standing by the chair at (2, 2), facing the table due north (+y): left is -x.
    row = _hand_row(
        [("chair", 2.0, 2.0), ("table", 2.0, 5.0), ("sofa", 0.5, 3.5), ("lamp", 3.5, 0.5), ("plant", 4.5, 2.1)]
    )
    records = synthrooms_qa_records([row], seed=0, per_scene=None, question_types=list(DIRECTION_TYPES))
    answers = _answers(records)

    def ask(question_type, query):
        start = f"If I am standing by the chair and facing the table, is the {query} to "
        question = start + {
            "object_rel_direction_easy": "the left or the right of the table?",
            "object_rel_direction_medium": "my left, right, or back?\nAn object is to my back if I would have to turn "
            "at least 135 degrees in order to face it.",
            "object_rel_direction_hard": "my front-left, front-right, back-left, or back-right?\nThe directions refer "
            "to the quadrants of a Cartesian plane (if I am standing at the origin and facing along the positive "
            "y-axis).",
        }[question_type]
        return answers.get((question_type, question))

    # Sofa: 45° to the front-left.
    assert ask("object_rel_direction_easy", "sofa") == "left"
    assert ask("object_rel_direction_medium", "sofa") == "left"
    assert ask("object_rel_direction_hard", "sofa") == "front-left"
    # Lamp: 135° to the right -- exactly on the medium task's right/back boundary, so that one is not asked.
    assert ask("object_rel_direction_easy", "lamp") == "right"
    assert ask("object_rel_direction_medium", "lamp") is None
    assert ask("object_rel_direction_hard", "lamp") == "back-right"
    # Plant: ~88° to the right -- on the hard task's front/back boundary.
    assert ask("object_rel_direction_medium", "plant") == "right"
    assert ask("object_rel_direction_hard", "plant") is None

    # The renderer's own camera agrees: at the chair looking at the table, the sofa projects left of the image
    # centre and its mirror image across the line of sight, (3.5, 3.5), right of it.
    intrinsics = intrinsics_from_fov(120.0, (49, 65))
    camera = look_extrinsics(np.array([2.0, 2.0, 0.4]), math.pi / 2, 0.0)
    pixels, depth = project_points(np.array([[0.5, 3.5, 0.4], [3.5, 3.5, 0.4]]), camera, intrinsics)
    assert (depth > 0).all() and pixels[0, 0] < intrinsics[0, 2] < pixels[1, 0]


def test_route_by_hand():
    # Start at the bed facing north (the tv); the fridge is east, the sofa north of the fridge.
    row = _hand_row([("bed", 1.0, 1.0), ("tv", 1.0, 4.0), ("refrigerator", 4.0, 1.0), ("sofa", 4.0, 4.0)])
    records = synthrooms_qa_records([row], seed=0, per_scene=None, question_types=["route_planning"])
    wanted = (
        "You are a robot beginning at the bed facing the tv. You want to navigate to the sofa. You will perform the "
        "following actions (Note: for each [please fill in], choose either 'turn back,' 'turn left,' or 'turn right.'): "
        "1. [please fill in] 2. Go forward until the refrigerator 3. [please fill in] 4. Go forward until the sofa. "
        "You have reached the final destination."
    )
    answers = _answers(records)
    assert answers[("route_planning", wanted)] == "Turn Right, Turn Left"
    # tv -> refrigerator -> bed: the turn at the refrigerator is 135°, between a side turn and turning back.
    unasked = "You are a robot beginning at the tv facing the sofa. You want to navigate to the bed."
    assert not any(q.startswith(unasked) for _, q in answers)


def test_only_unique_visible_objects_are_named():
    # Two chairs (not unique), a table never visible, and three visible unique objects.
    row = _hand_row(
        [("chair", 1.0, 1.0), ("chair", 1.0, 3.0), ("table", 5.0, 5.0)]
        + [("sofa", 3.0, 1.0), ("lamp", 3.0, 4.0), ("bed", 5.0, 2.0)],
        visible=[[1, 2, 4], [5], [6]],
    )
    records = synthrooms_qa_records([row], seed=0, per_scene=None)
    text = " ".join(r["question"] + " ".join(r["options"] or []) for r in records)
    counting = sorted((r["ground_truth"], r["question"]) for r in records if r["question_type"] == "object_counting")
    assert [answer for answer, _ in counting] == ["1", "2"] and counting[1][1] == "How many chair(s) are in this room?"
    assert counting[0][1] in {f"How many {c}(s) are in this room?" for c in ("sofa", "lamp", "bed")}  # never the table
    for r in records:
        if r["question_type"] not in ("object_counting", "obj_appearance_order", "object_rel_distance"):
            assert "chair" not in r["question"], r
    assert "table" not in text
    order = [r for r in records if r["question_type"] == "obj_appearance_order"]
    first_frame = {"chair": 0, "sofa": 0, "lamp": 1, "bed": 2}
    assert order
    for r in order:
        listed = r["question"].rsplit(": ", 1)[1].rstrip("?").split(", ")
        assert _answer_text(r) == ", ".join(sorted(listed, key=first_frame.get))
        assert "chair" not in listed or "sofa" not in listed  # same first frame: never together


def test_min_visible_pixels(scenes, rows):
    # No object covers a million pixels of an 84x112 frame: only the room question remains.
    records = synthrooms_qa_records(scenes, seed=0, per_scene=None, min_visible_pixels=10**6)
    assert {r["question_type"] for r in records} == {"room_size_estimation"}
    masks = scenes.select_columns(["instances", "visible_objects"]).with_format("numpy")
    strict = synthrooms_qa_records(scenes, seed=0, per_scene=None, min_visible_pixels=40)
    sizes = [r for r in strict if r["question_type"] == "object_size_estimation"]
    assert sizes
    big = {}
    for index in range(len(scenes)):
        instances = masks[index]["instances"]
        big[index] = {int(k) for k in np.unique(instances) if k > 0 and max((m == k).sum() for m in instances) >= 40}
    for r in sizes:
        category = re.search(r"\(length, width, or height\) of the (.+), measured", r["question"]).group(1)
        obj_id = _unique_object(rows[r["frames"]], category)["id"]
        assert obj_id in big[r["frames"]]


# ---------------------------------------------------------------- validation


def test_validate_record_errors():
    good_mc = {"id": "x-1", "question_type": "object_rel_distance", "question": "q?", "options": ["A. sofa", "B. bed"]}
    good_mc["ground_truth"] = "B"
    good_num = {"id": 7, "question_type": "object_abs_distance", "question": "q?", "options": None}
    good_num["ground_truth"] = "1.25"
    assert validate_record(good_mc) is good_mc and validate_record(good_num) is good_num
    cases = [
        ({**good_num, "ground_truth": "two"}, r"record 7: ground_truth 'two' is not a number"),
        ({**good_num, "ground_truth": "nan"}, r"record 7: .*finite number"),
        ({**good_num, "question_type": "object_counting", "ground_truth": "2.5"}, r"record 7: .*must be an integer"),
        ({**good_num, "options": ["A. 1"]}, r"record 7: numerical question_type .* takes no options"),
        ({**good_mc, "ground_truth": "C"}, r"record 'x-1': ground_truth 'C' is not one of the option letters \['A', 'B'\]"),
        ({**good_mc, "ground_truth": "B."}, r"record 'x-1': ground_truth 'B\.'"),
        ({**good_mc, "options": ["A. sofa", "B. sofa"]}, r"record 'x-1': .*repeat an answer"),
        ({**good_mc, "options": ["A. sofa", "A. bed"]}, r"record 'x-1': options repeat the letter\(s\) \['a'\]"),
        ({**good_mc, "options": ["sofa", "bed"]}, r"record 'x-1': option 'sofa' has no letter label"),
        ({**good_mc, "question_type": "object_rel_direction"}, r"record 'x-1': unknown question_type"),
        ({**good_mc, "id": None}, r"non-empty str or int 'id'"),
    ]
    for record, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_record(record)


def test_bad_arguments():
    row = _hand_row([("chair", 1.0, 1.0), ("sofa", 3.0, 1.0)])
    with pytest.raises(ValueError, match="per_scene must be a positive int or None, got 0"):
        synthrooms_qa_records([row], per_scene=0)
    with pytest.raises(ValueError, match="question_types must be a non-empty subset"):
        synthrooms_qa_records([row], question_types=["object_rel_direction"])
    with pytest.raises(ValueError, match=r"frame 0 lists visible object 9, which is not in objects"):
        synthrooms_qa_records([{**row, "visible_objects": [[9]]}])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['visible_objects'\]"):
        synthrooms_qa_records([{k: v for k, v in row.items() if k != "visible_objects"}])


# ---------------------------------------------------------------- TRL dataset


def test_build_synthrooms_qa_trl_format(scenes):
    from trl.data_utils import prepare_multimodal_messages

    dataset = build_synthrooms_qa(**SCENE_ARGS, seed=0, split="train")
    records = synthrooms_qa_records(scenes, seed=0)
    assert len(dataset) == len(records)
    assert dataset.column_names == [
        "id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth", "frames", "images", "messages"
    ]
    for index in (0, len(dataset) - 1):
        row, record = dataset[index], records[index]
        assert {k: row[k] for k in record} == record
        assert len(row["images"]) == SCENE_ARGS["frames_per_scene"]
        scene_images = scenes[record["frames"]]["images"]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(row["images"], scene_images))
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert [c["type"] for c in user["content"]] == ["image"] * 8 + ["text"]
        prompt = build_vsibench_prompt(record["question"], record["question_type"], record["options"])
        assert user["content"][-1]["text"] == prompt
        assert assistant["content"] == [{"type": "text", "text": record["ground_truth"]}]
        filled = prepare_multimodal_messages(row["messages"], row["images"])
        assert [c["image"] for c in filled[0]["content"][:8]] == row["images"]
    # The plain-python helper gives the TRL format exactly.
    record = records[0]
    prompt = build_vsibench_prompt(record["question"], record["question_type"], record["options"])
    assert vsibench_messages(record, 2) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": record["ground_truth"]}]},
    ]


def test_held_out_split_uses_other_scenes(scenes):
    held_out = build_synthrooms_qa(num_scenes=1, frames_per_scene=8, image_size=(84, 112), seed=0, split="validation")
    assert set(held_out["scene_name"]) == {"validation-00000"}
    train_frames = {np.asarray(scenes[i]["images"][0]).tobytes() for i in range(len(scenes))}
    assert np.asarray(held_out[0]["images"][0]).tobytes() not in train_frames
