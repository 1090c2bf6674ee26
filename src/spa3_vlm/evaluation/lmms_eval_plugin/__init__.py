"""Spa3-VLM as an lmms-eval model, registered without editing lmms-eval: ``--model spa3_vlm``.

Two registration routes, both pointing at :class:`models.spa3_vlm.Spa3VLM`:

* entry points (lmms-eval >= 0.6, the current mechanism): lmms-eval's model registry loads every entry point of
  the group ``lmms_eval.models``; ours is :func:`model_manifests`. Declared in the package metadata::

      [project.entry-points."lmms_eval.models"]
      spa3_vlm = "spa3_vlm.evaluation.lmms_eval_plugin:model_manifests"

* ``LMMS_EVAL_PLUGINS=spa3_vlm.evaluation.lmms_eval_plugin`` (deprecated, what the reference used; also the only
  route of older lmms-eval): lmms-eval imports ``<plugin>.models`` and reads its ``AVAILABLE_MODELS``; its CLI also
  adds the ``<plugin>.tasks`` folder to the task search path (empty here, but it must exist).

Importing this package does not import lmms-eval (or torch models); only loading the class does.
"""

from __future__ import annotations

MODEL_NAME = "spa3_vlm"
CLASS_NAME = "Spa3VLM"
CLASS_PATH = f"{__name__}.models.{MODEL_NAME}.{CLASS_NAME}"

__all__ = ["CLASS_NAME", "CLASS_PATH", "MODEL_NAME", "model_manifests"]


def model_manifests():
    """The ``lmms_eval.models`` entry point: one ``ModelManifest`` for ``spa3_vlm`` (a "simple" model class)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)]
