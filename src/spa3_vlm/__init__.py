"""Spa3R predictive spatial field models and Spa3-VLM, native to the Hugging Face stack.

Importing the package registers its configs, models and processors with the transformers Auto classes, so
``AutoConfig`` / ``AutoModel`` / ``AutoModelForImageTextToText`` resolve ``model_type`` ``"spa3r"``,
``"spa3_vggt"``, ``"spa3_vlm"`` (on Qwen2.5-VL) and ``"spa3_vlm_qwen3"`` (on Qwen3-VL), and ``AutoProcessor`` / ``AutoImageProcessor`` the Spa3-VLM and geometry
processors, without ``trust_remote_code``. Nothing else happens at import: no network, no files.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoProcessor,
)

from .configuration_spa3r import Spa3RConfig
from .configuration_spa3_vlm import Spa3VLMConfig, Spa3VLMQwen3Config
from .configuration_vggt import VGGTConfig
from .modeling_spa3r import Spa3RFieldOutput, Spa3RForFieldPrediction, Spa3RModel, Spa3RModelOutput
from .modeling_spa3_vlm import Spa3VLMForConditionalGeneration, Spa3VLMQwen3ForConditionalGeneration
from .modeling_vggt import VGGTModel, VGGTOutput
from .processing_spa3_vlm import Spa3VLMProcessor
from .processing_spa3r import Spa3RImageProcessor

__version__ = "0.1.0"

AutoConfig.register(VGGTConfig.model_type, VGGTConfig, exist_ok=True)
AutoModel.register(VGGTConfig, VGGTModel, exist_ok=True)
AutoConfig.register(Spa3RConfig.model_type, Spa3RConfig, exist_ok=True)
AutoModel.register(Spa3RConfig, Spa3RModel, exist_ok=True)
AutoModelForPreTraining.register(Spa3RConfig, Spa3RForFieldPrediction, exist_ok=True)
AutoConfig.register(Spa3VLMConfig.model_type, Spa3VLMConfig, exist_ok=True)
AutoModelForImageTextToText.register(Spa3VLMConfig, Spa3VLMForConditionalGeneration, exist_ok=True)
AutoConfig.register(Spa3VLMQwen3Config.model_type, Spa3VLMQwen3Config, exist_ok=True)
AutoModelForImageTextToText.register(Spa3VLMQwen3Config, Spa3VLMQwen3ForConditionalGeneration, exist_ok=True)
# Processors resolve their sub-processors through the Auto classes by class name (transformers >= 5.25).
AutoImageProcessor.register(Spa3RConfig, image_processor_classes={"pil": Spa3RImageProcessor}, exist_ok=True)
AutoProcessor.register(Spa3VLMConfig, Spa3VLMProcessor, exist_ok=True)

# `save_pretrained` copies the defining modules and writes an `auto_map`, so saved folders load with
# `trust_remote_code=True` where this package is not installed.
VGGTConfig.register_for_auto_class()
VGGTModel.register_for_auto_class("AutoModel")
Spa3RConfig.register_for_auto_class()
Spa3RModel.register_for_auto_class("AutoModel")
Spa3RForFieldPrediction.register_for_auto_class("AutoModelForPreTraining")
Spa3VLMConfig.register_for_auto_class()
Spa3VLMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
Spa3VLMQwen3Config.register_for_auto_class()
Spa3VLMQwen3ForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "Spa3RConfig",
    "Spa3RImageProcessor",
    "Spa3VLMConfig",
    "Spa3VLMForConditionalGeneration",
    "Spa3VLMProcessor",
    "Spa3VLMQwen3Config",
    "Spa3VLMQwen3ForConditionalGeneration",
    "Spa3RFieldOutput",
    "Spa3RForFieldPrediction",
    "Spa3RModel",
    "Spa3RModelOutput",
    "VGGTConfig",
    "VGGTModel",
    "VGGTOutput",
]
