"""Everything the Space does besides drawing the UI, in one namespace: ``app.py`` imports this module as ``core``.
No gradio here: problems a user can fix raise ``ValueError`` with a message meant for the UI (``app.py`` shows it
with ``gr.Error``). Importing it loads no model and touches neither the network nor the disk beyond Python imports.

The code lives in the sibling modules, one concern each:

- ``space_models``: model choice (the allow-list of the model boxes, :class:`ModelSpec`) and the loaded-model caches;
- ``space_uploads``: checking and reading uploaded images and videos;
- ``space_ask``: the Ask tab's answer;
- ``space_examples``: the held-out SynthRooms example scenes of both tabs;
- ``space_see``: the See tab's views and predicted feature field.

Re-exported: what ``app.py`` and the tests use, the types the functions return, and a few internals the tests
look at (hence the ``noqa: F401``). Settings are read where they are defined: patch ``space_models.SEARCH_ROOTS``
or ``space_uploads.MAX_FILE_MB``; patching the name here would change nothing those modules read.
"""

from space_ask import Answer, answer_question  # noqa: F401
from space_examples import (  # noqa: F401
    _ASK_EXAMPLES,
    _SEE_SCENES,
    NUM_EXAMPLE_SCENES,
    ask_example,
    example_prompt,
    pick_question,
    synthrooms_views,
)
from space_models import (  # noqa: F401
    ALLOW_ENV,
    DEFAULT_SPA3R_FOLDER,
    DEFAULT_VLM_FOLDER,
    FIELD_CACHE,
    HUB_FILES,
    SPA3R_ENV,
    TINY_RANDOM,
    VLM_CACHE,
    VLM_ENV,
    FieldBundle,
    ModelSpec,
    VLMBundle,
    _load_field_model,
    _load_vlm,
    default_model_choice,
    get_field_model,
    get_vlm,
    hub_reachable,
    local_model_folders,
    model_choices,
    resolve_model,
)
from space_see import (  # noqa: F401
    MAX_SEE_VIEWS,
    SeeResult,
    ViewSet,
    encode_views,
    relative_motion,
    see,
    uploaded_views,
    view_thumbnails,
)
from space_uploads import MAX_FILE_MB, MAX_FRAMES, read_uploads  # noqa: F401
