"""``python -m spa3_vlm.eval``: VSI-Bench / SynthRooms-QA evaluation (see :mod:`spa3_vlm.evaluation.runner`).

    python -m spa3_vlm.eval --model spa3-vlm-3b --dataset vsibench --data_root vsibench/ --output preds.jsonl
"""

import sys

from spa3_vlm.evaluation.runner import main

if __name__ == "__main__":
    sys.exit(main())
