"""VSI-Bench (Thinking in Space) metric for 🤗 evaluate: lmms-eval's accuracy / MRA scoring and aggregation.

``evaluate`` copies this script into its modules cache and runs it standalone, so it imports the scoring from
the installed ``spa3_vlm`` package (absolute import, one import per line for evaluate's import scanner).
"""

import datasets
import evaluate

from spa3_vlm.evaluation.scoring import vsibench_scores
from spa3_vlm.vsibench import PARSING_MODES

_CITATION = """\
@article{yang2024thinking,
  title={Thinking in Space: How Multimodal Large Language Models See, Remember, and Recall Spaces},
  author={Yang, Jihan and Yang, Shusheng and Gupta, Anjali W. and Han, Rilyn and Fei-Fei, Li and Xie, Saining},
  journal={arXiv preprint arXiv:2412.14171},
  year={2024}
}
"""

_DESCRIPTION = """\
VSI-Bench scores as computed by lmms-eval: multiple-choice questions by exact match of the answer letter,
numerical questions by mean relative accuracy over the thresholds 0.50, 0.55, ..., 0.95. Question types are
averaged, the three object_rel_direction sub-types merged by an unweighted mean, and `overall` is the
unweighted mean of the 8 task scores (0-1 scale).
"""

_KWARGS_DESCRIPTION = f"""
Args:
    predictions (`list` of `str` or `None`): raw model answers; `None` = no answer (scores 0, counted).
    references (`list` of `str`): ground truths: the option letter, or the number as text.
    question_types (`list` of `str`): VSI-Bench question types, e.g. "object_counting".
    ids (`list` of `str`, or `list` of `int`): unique question ids.
    options (`list` of `list` of `str`): the options ("A. sofa", ...) of multiple-choice questions;
        `[]` or `None` for numerical ones.
    parsing (`str`, optional): how numerical answers are read, one of {list(PARSING_MODES)};
        default "lmms-eval-2024" (the pinned lmms-eval behaviour).
Returns:
    overall, tasks, task_counts, question_type_scores, question_type_counts, per_record, num_records,
    num_missing_predictions, missing_prediction_ids, missing_question_types, missing_tasks, parsing
    (see `spa3_vlm.evaluation.vsibench_scores`).
Examples:
    >>> metric = evaluate.load("path/to/vsibench_metric")
    >>> metric.compute(predictions=["3", "B."], references=["3", "B"], ids=["q1", "q2"],
    ...                question_types=["object_counting", "route_planning"],
    ...                options=[[], ["A. left", "B. right"]])["overall"]
    1.0
"""


def _features(id_type: str) -> datasets.Features:
    return datasets.Features(
        {
            "predictions": datasets.Value("string"),
            "references": datasets.Value("string"),
            "question_types": datasets.Value("string"),
            "ids": datasets.Value(id_type),
            "options": datasets.Sequence(datasets.Value("string")),
        }
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VsibenchMetric(evaluate.Metric):
    """VSI-Bench accuracy / MRA, wrapping `spa3_vlm.evaluation.vsibench_scores`."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # String ids first; integer ids (VSI-Bench's own) are picked when the first id is an int.
            features=[_features("string"), _features("int64")],
            reference_urls=[
                "https://arxiv.org/abs/2412.14171",
                "https://huggingface.co/datasets/nyu-visionx/VSI-Bench",
            ],
        )

    def _enforce_nested_string_type(self, schema, obj):
        # evaluate type-checks only the first row and rejects a None string there, while Arrow stores None
        # anywhere else; a missing prediction is legitimate input, so let None through everywhere.
        if obj is None:
            return None
        return super()._enforce_nested_string_type(schema, obj)

    def _compute(self, predictions, references, question_types, ids, options, parsing="lmms-eval-2024"):
        records = [
            {
                "id": record_id,
                "question_type": question_type,
                "ground_truth": reference,
                "prediction": prediction,
                "options": record_options,
            }
            for prediction, reference, question_type, record_id, record_options in zip(
                predictions, references, question_types, ids, options
            )
        ]
        return vsibench_scores(records, parsing=parsing)
