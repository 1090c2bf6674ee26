"""Contract test of the lmms-eval plugin against a stand-in of the lmms-eval API it uses.

lmms-eval is not installed here: ``pip install lmms-eval`` would replace torch 2.13 by 2.14.1 and pull
torchvision and CUDA wheels. So this test puts a minimal lmms-eval in ``sys.modules`` with exactly the surface the
plugin touches (as of lmms-eval 0.7.3):

* ``lmms_eval.api.model.lmms``: abstract base with ``loglikelihood`` / ``generate_until`` /
  ``generate_until_multi_round``, ``_rank`` / ``_world_size``, ``task_dict`` and ``cache_hook``; class attribute
  ``is_simple = True``;
* ``lmms_eval.api.registry.register_model(*names)`` filling ``MODEL_REGISTRY``;
* ``lmms_eval.api.instance.Instance(request_type, arguments, idx, metadata)`` whose ``args`` is the arguments tuple
  ``(context, generation_kwargs, doc_to_visual, doc_id, task, split)``;
* ``lmms_eval.models.registry_v2.ModelManifest(model_id, simple_class_path=..., chat_class_path=..., aliases=...)``.

The two ways lmms-eval finds a plugin model are replayed as lmms-eval does them: the ``lmms_eval.models`` entry
point payload (a callable returning manifests, whose class path is imported) and the deprecated
``LMMS_EVAL_PLUGINS`` route (``<plugin>.tasks`` must be a package folder, import ``<plugin>.models``, read
``AVAILABLE_MODELS``, import ``<plugin>.models.<name>.<class>``). Then the class answers requests end to end with a
tiny Spa3-VLM, giving exactly the runner's answers. (The same plugin was also run once by the real lmms-eval 0.7.3
CLI in a throw-away virtualenv, see docs/evaluation.md.)
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field

import pytest

from eval_testing import read_jsonl, save_tiny_spa3_vlm

PLUGIN = "spa3_vlm.evaluation.lmms_eval_plugin"
PLUGIN_MODULE = f"{PLUGIN}.models.spa3_vlm"


def fake_lmms_eval() -> dict[str, types.ModuleType]:
    """Modules of a minimal lmms-eval (see the module docstring)."""
    modules = {name: types.ModuleType(name) for name in (
        "lmms_eval", "lmms_eval.api", "lmms_eval.api.model", "lmms_eval.api.registry", "lmms_eval.api.instance",
        "lmms_eval.models", "lmms_eval.models.registry_v2")}  # fmt: skip

    class CacheHook:
        def __init__(self):
            self.added = []

        def add_partial(self, attr, req, res):
            self.added.append((attr, req, res))

    class lmms(abc.ABC):  # noqa: N801 (lmms-eval's name)
        is_simple = True

        def __init__(self):
            self._rank, self._world_size = 0, 1
            self.cache_hook = CacheHook()
            self.task_dict = {}

        @abc.abstractmethod
        def loglikelihood(self, requests): ...

        @abc.abstractmethod
        def generate_until(self, requests): ...

        @abc.abstractmethod
        def generate_until_multi_round(self, requests): ...

        @property
        def rank(self):
            return self._rank

        @property
        def world_size(self):
            return self._world_size

    registry: dict[str, type] = {}

    def register_model(*names):
        def decorate(cls):
            for name in names:
                assert issubclass(cls, lmms), f"{cls} must extend lmms"
                registry[name] = cls
            return cls

        return decorate

    @dataclass
    class Instance:
        request_type: str
        arguments: tuple
        idx: int
        metadata: dict = field(default_factory=dict)

        @property
        def args(self):
            return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)

    @dataclass(frozen=True)
    class ModelManifest:
        model_id: str
        simple_class_path: str | None = None
        chat_class_path: str | None = None
        aliases: tuple = ()

    modules["lmms_eval.api.model"].lmms = lmms
    modules["lmms_eval.api.registry"].register_model = register_model
    modules["lmms_eval.api.registry"].MODEL_REGISTRY = registry
    modules["lmms_eval.api.instance"].Instance = Instance
    modules["lmms_eval.models.registry_v2"].ModelManifest = ModelManifest
    for name, module in modules.items():
        module.__path__ = []  # packages, so submodule imports resolve through sys.modules
    return modules


@pytest.fixture
def lmms_eval(monkeypatch):
    """The stand-in lmms-eval in sys.modules; the plugin class module is imported fresh against it."""
    modules = fake_lmms_eval()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    yield types.SimpleNamespace(**{name.rsplit(".", 1)[-1]: module for name, module in modules.items()})
    sys.modules.pop(PLUGIN_MODULE, None)  # never leave a class bound to the stand-in behind


def import_class(path: str):
    module_name, class_name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)


def check_simple_model_class(cls, lmms_base):
    """What lmms-eval's registry checks before using a class resolved as a "simple" model."""
    assert isinstance(cls, type) and issubclass(cls, lmms_base)
    assert cls.is_simple is True


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_spa3_vlm(tmp_path_factory.mktemp("plugin") / "model")


# ---------------------------------------------------------------------------------------------- registration


def test_entry_point_payload_resolves_to_a_simple_lmms_model(lmms_eval):
    plugin = importlib.import_module(PLUGIN)
    (manifest,) = plugin.model_manifests()
    assert isinstance(manifest, lmms_eval.registry_v2.ModelManifest)
    assert manifest.model_id == "spa3_vlm" and manifest.chat_class_path is None
    cls = import_class(manifest.simple_class_path)
    check_simple_model_class(cls, lmms_eval.model.lmms)
    assert cls.__name__ == "Spa3VLM"
    assert lmms_eval.registry.MODEL_REGISTRY["spa3_vlm"] is cls  # @register_model ran on import


def test_legacy_lmms_eval_plugins_route_resolves_to_the_same_class(lmms_eval, monkeypatch):
    monkeypatch.setenv("LMMS_EVAL_PLUGINS", PLUGIN)
    resolved = {}
    for plugin in (item.strip() for item in os.environ["LMMS_EVAL_PLUGINS"].split(",")):
        # lmms-eval's CLI adds each plugin's tasks folder to its task search path (and fails without one) ...
        tasks = importlib.util.find_spec(f"{plugin}.tasks")
        assert tasks is not None and os.path.isdir(tasks.submodule_search_locations[0])
        # ... and its model registry reads AVAILABLE_MODELS of <plugin>.models.
        available = importlib.import_module(f"{plugin}.models").AVAILABLE_MODELS
        for model_name, class_name in available.items():
            resolved[model_name] = import_class(f"{plugin}.models.{model_name}.{class_name}")
    assert list(resolved) == ["spa3_vlm"]
    check_simple_model_class(resolved["spa3_vlm"], lmms_eval.model.lmms)
    (manifest,) = importlib.import_module(PLUGIN).model_manifests()
    assert resolved["spa3_vlm"] is import_class(manifest.simple_class_path)


def test_importing_the_plugin_package_does_not_need_lmms_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # any import of it now raises ImportError
    plugin = importlib.reload(importlib.import_module(PLUGIN))
    assert plugin.CLASS_PATH == PLUGIN_MODULE + ".Spa3VLM"
    assert importlib.import_module(f"{PLUGIN}.models").AVAILABLE_MODELS == {"spa3_vlm": "Spa3VLM"}


# ---------------------------------------------------------------------------------------------- requests


def make_requests(lmms_eval, docs, gen_kwargs_per_doc):
    def doc_to_visual(doc):
        return [doc["video"]]

    return [
        lmms_eval.instance.Instance(
            "generate_until",
            (doc["prompt"], gen_kwargs, doc_to_visual, doc_id, "vsibench", "test"),
            idx=0,
            metadata={"task": "vsibench", "doc_id": doc_id, "repeats": 1},
        )
        for doc_id, (doc, gen_kwargs) in enumerate(zip(docs, gen_kwargs_per_doc))
    ]


def vsibench_docs(vsibench_dir, samples):
    return [{"video": sample.video, "prompt": sample.prompt} for sample in samples]


def test_generate_until_gives_the_runners_answers(lmms_eval, tiny_dir, vsibench_dir, tmp_path):
    from spa3_vlm.evaluation.runner import main
    from spa3_vlm.evaluation.samples import load_vsibench_samples

    output = tmp_path / "runner.jsonl"
    assert main(["--model", str(tiny_dir), "--dataset", "vsibench", "--data_root", str(vsibench_dir), "--output",
                 str(output), "--limit", "4", "--no_progress"]) == 0  # fmt: skip
    runner_answers = [line["prediction"] for line in read_jsonl(output)]
    samples = load_vsibench_samples(str(vsibench_dir))[0][:4]

    cls = import_class(importlib.import_module(PLUGIN).CLASS_PATH)
    # lmms-eval hands model_args over as strings / ints, plus batch_size, max_batch_size and device from its CLI.
    model = cls(pretrained=str(tiny_dir), device="cpu", batch_size="2", max_batch_size=None, max_num_frames="32",
                min_pixels="None")  # fmt: skip
    model.task_dict = {"vsibench": {"test": vsibench_docs(vsibench_dir, samples)}}
    vsibench_kwargs = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
                       "until": ["\n\n"]}  # fmt: skip  (what lmms-eval builds from the VSI-Bench task yaml)
    stop_at_e = {**vsibench_kwargs, "until": ["e"]}
    docs = model.task_dict["vsibench"]["test"]
    requests = make_requests(lmms_eval, docs, [vsibench_kwargs, stop_at_e, vsibench_kwargs, stop_at_e])
    answers = model.generate_until(requests)

    assert answers[0] == runner_answers[0] and answers[2] == runner_answers[2]
    assert answers[1] == runner_answers[1].split("e")[0] and answers[3] == runner_answers[3].split("e")[0]
    assert any("e" in runner_answers[i] for i in (1, 3))  # the stop string really cut something
    assert [entry[2] for entry in model.cache_hook.added] == [answers[0], answers[2], answers[1], answers[3]]
    assert model.batch_size == 2 and model.generator.max_new_tokens == 16


def test_unsupported_requests_and_arguments_are_refused(lmms_eval, tiny_dir, vsibench_dir):
    from spa3_vlm.evaluation.samples import load_vsibench_samples

    cls = import_class(importlib.import_module(PLUGIN).CLASS_PATH)
    with pytest.raises(ValueError, match=r"unknown model_args \['max_frames_num'\] for spa3_vlm"):
        cls(pretrained=str(tiny_dir), device="cpu", max_frames_num=32)
    with pytest.raises(ValueError, match="model_args batch_size must be an integer, got 'two'"):
        cls(pretrained=str(tiny_dir), device="cpu", batch_size="two")
    with pytest.raises(ValueError, match="model_args max_num_frames must be a positive integer, got 0"):
        cls(pretrained=str(tiny_dir), device="cpu", max_num_frames=0)
    model = cls(pretrained=str(tiny_dir), device="cpu")
    with pytest.raises(NotImplementedError, match="loglikelihood is not implemented"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError):
        model.generate_until_multi_round([])

    samples = load_vsibench_samples(str(vsibench_dir))[0][:1]
    model.task_dict = {"vsibench": {"test": vsibench_docs(vsibench_dir, samples)}}
    sampling = make_requests(lmms_eval, model.task_dict["vsibench"]["test"], [{"do_sample": True, "temperature": 0.7}])
    message = r"decodes greedily; the task asks for sampling \(do_sample=True, temperature=0.7\)"
    with pytest.raises(ValueError, match=message):
        model.generate_until(sampling)
    two_visuals = lmms_eval.instance.Instance(
        "generate_until", ("q", {}, lambda doc: [doc["video"], doc["video"]], 0, "vsibench", "test"), idx=0
    )
    with pytest.raises(ValueError, match=r"expected one video path per question, got 2 path\(s\)"):
        model.generate_until([two_visuals])
