"""``LMMS_EVAL_PLUGINS`` hook: lmms-eval imports ``<plugin>.models`` and loads
``<plugin>.models.<name>.<AVAILABLE_MODELS[name]>``."""

AVAILABLE_MODELS = {"spa3_vlm": "Spa3VLM"}
