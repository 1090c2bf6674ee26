"""``python -m spa3_vlm``: the ``spa3-vlm`` command (:mod:`spa3_vlm.cli`)."""

import sys

from spa3_vlm.cli import main

if __name__ == "__main__":
    sys.exit(main())
