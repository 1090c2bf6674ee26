"""Helpers for the VSI-Bench metric tests: numerical and multiple-choice records, the evaluate module's inputs."""

OPTIONS = ["A. sofa", "B. bed", "C. table", "D. chair"]


def num(record_id, ground_truth, prediction, question_type="object_abs_distance"):
    return {"id": record_id, "question_type": question_type, "ground_truth": ground_truth, "prediction": prediction}


def mc(record_id, ground_truth, prediction, question_type="route_planning", options=OPTIONS):
    return {
        "id": record_id,
        "question_type": question_type,
        "ground_truth": ground_truth,
        "prediction": prediction,
        "options": list(options),
    }


def evaluate_inputs(records):
    """``records`` as the keyword arguments of the evaluate module's ``compute`` / ``add_batch``."""
    return {
        "predictions": [r["prediction"] for r in records],
        "references": [str(r["ground_truth"]) for r in records],
        "question_types": [r["question_type"] for r in records],
        "ids": [r["id"] for r in records],
        "options": [r.get("options") for r in records],
    }
