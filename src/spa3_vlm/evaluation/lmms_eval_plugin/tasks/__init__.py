"""Task folder of the plugin: lmms-eval's CLI adds ``<plugin>.tasks`` to its task search path for every package in
``LMMS_EVAL_PLUGINS`` and fails if it does not exist. The plugin adds no tasks (VSI-Bench is lmms-eval's own)."""
