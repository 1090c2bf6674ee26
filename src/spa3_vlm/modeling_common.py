"""Transformer building blocks shared by the VGGT backbone and Spa3R.

Parameter names follow the DINOv2/VGGT convention (`norm1`, `attn.qkv`, `attn.q_norm`, `ls1.gamma`,
`mlp.fc1`, ...) so that released checkpoints load without renaming.

Positional information reaches attention through small objects computed once per forward pass and
shared by every block (``RotaryEmbedding2D`` tables, a ``PRoPE`` camera transform), instead of being
recomputed inside each layer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2. ``[..., in] -> [..., out]``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        if hidden.requires_grad:
            hidden = self.act(hidden)  # autograd keeps the pre-activation for GELU's backward
        else:
            # Without autograd the widest activation of a block is held once instead of twice: GELU in place
            # (the same kernel, the same values).
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.act.approximate)
        return self.fc2(hidden)


class LayerScale(nn.Module):
    """Per-channel residual scale; the parameter is named ``gamma`` as in VGGT/DINOv2 checkpoints."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def make_qk_norm(kind: Optional[str], head_dim: int, eps: Optional[float]) -> nn.Module:
    """Per-head query/key normalisation: ``"layernorm"`` (VGGT), ``"rmsnorm"`` (Spa3R) or ``None``."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "layernorm":
        return nn.LayerNorm(head_dim, eps=1e-5 if eps is None else eps)
    if kind == "rmsnorm":
        # eps=None means torch's default, the dtype's machine epsilon: that is what Spa3R was trained with.
        return nn.RMSNorm(head_dim, eps=eps)
    raise ValueError(f"qk_norm must be 'layernorm', 'rmsnorm' or None, got {kind!r}")


class RotaryEmbedding2D:
    """2D rotary tables for integer (row, col) positions, VGGT convention.

    The first half of each head vector is rotated by the row, the second half by the column; each half
    uses ``rotate_half`` pairing with inverse frequencies ``base^(-2j/d')``.

    Args:
        positions: ``[N, 2]`` or ``[B, N, 2]`` integer (row, col).
        head_dim: attention head size (divisible by 4).
    """

    def __init__(self, positions: torch.Tensor, head_dim: int, base: float = 100.0, dtype: torch.dtype = torch.float32):
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
        half = head_dim // 2
        inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device).float() / half))
        angles = positions.float()[..., None] * inv_freq  # [..., N, 2, half/2]
        angles = torch.cat([angles, angles], dim=-1)  # [..., N, 2, half]
        # Broadcast over heads: [B or 1, 1, N, 2, half].
        if angles.dim() == 3:
            angles = angles[None]
        self.cos = angles.cos()[:, None].to(dtype)
        # rotate_half(x) * sin == swap_halves(x) * signed_sin exactly (a sign flip rounds nothing), which spares
        # the negated copy rotate_half would make.
        sin = angles.sin()[:, None].to(dtype)
        first, second = sin.chunk(2, dim=-1)
        self.signed_sin = torch.cat([-first, second], dim=-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, heads, N, D]`` -> rotated ``x`` (same shape): ``x cos + rotate_half(x) sin`` per half."""
        shape = x.shape
        x = x.unflatten(-1, (2, shape[-1] // 2))  # [B, h, N, 2 (row/col half), D/2]
        first, second = x.chunk(2, dim=-1)
        # In place on the two fresh products: two temporaries of x's size instead of four (same roundings).
        rotated = torch.cat([second, first], dim=-1)
        rotated *= self.signed_sin.to(x.dtype)
        out = x * self.cos.to(x.dtype)
        out += rotated
        return out.flatten(-2)


class PositionalTransform(Protocol):
    """A per-forward camera/position transform applied around scaled dot-product attention. Each takes and returns
    ``[B, heads, T, d]``; queries, keys and values go one at a time, so each input can be freed before the next."""

    def transform_query(self, q: torch.Tensor) -> torch.Tensor: ...

    def transform_key(self, k: torch.Tensor) -> torch.Tensor: ...

    def transform_value(self, v: torch.Tensor) -> torch.Tensor: ...

    def transform_output(self, out: torch.Tensor, rows: Optional[slice] = None, sequence_length: Optional[int] = None) -> torch.Tensor: ...


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in plain matmuls (transformers' ``"eager"`` implementation).

    ``query [B, h, N, d]``, ``key`` / ``value [B, h, M, d]``, optional additive ``attention_mask`` broadcastable
    to ``[B, h, N, M]`` -> ``(output [B, N, h, d], weights [B, h, N, M])``, the layout of transformers' other
    attention functions.
    """
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    # Softmax in fp32, as the fused kernels accumulate it: bf16 logits would lose the small probabilities.
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm, 2D RoPE or a relative camera transform.

    ``x [B, N, C] -> [B, N, C]``. ``num_context_tokens`` implements the asymmetric view mask of
    Spa3R's masked VGGT without materialising an ``N x N`` mask: the first ``num_context_tokens`` queries
    attend only to the first ``num_context_tokens`` keys, the remaining queries attend to all keys.
    ``query_rows`` (a contiguous slice) computes the output of those rows only, ``[B, rows, C]``: every
    row still serves as a key and value.

    The kernel is the model's ``config._attn_implementation`` (``from_pretrained(..., attn_implementation=...)``,
    ``model.set_attn_implementation``) looked up in transformers' attention interface; a block built without a
    config uses SDPA, the models' default.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: Optional[str] = None,
        qk_norm_eps: Optional[float] = None,
        config: Optional[PreTrainedConfig] = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by the number of heads {num_heads}")
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # Exactly SDPA's default scale (1 / sqrt(d) in double), so passing it changes no bit of the output.
        self.scaling = 1.0 / math.sqrt(self.head_dim)
        # transformers' sdpa function treats a module without this flag as causal.
        self.is_causal = False
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = make_qk_norm(qk_norm, self.head_dim, qk_norm_eps)
        self.k_norm = make_qk_norm(qk_norm, self.head_dim, qk_norm_eps)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[RotaryEmbedding2D] = None,
        camera_transform: Optional[PositionalTransform] = None,
        num_context_tokens: Optional[int] = None,
        query_rows: Optional[slice] = None,
    ) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # One tensor at a time, each result replacing its input, so that no step holds both the normed and the
        # rotated copy of another tensor (the attention's memory peak).
        q = self.q_norm(q)
        if rope is not None:
            q = rope(q)
        if camera_transform is not None:
            q = camera_transform.transform_query(q)
        k = self.k_norm(k)
        if rope is not None:
            k = rope(k)
        if camera_transform is not None:
            k = camera_transform.transform_key(k)
            v = camera_transform.transform_value(v)
        if query_rows is not None:
            if num_context_tokens is not None:
                raise ValueError("query_rows and num_context_tokens cannot be combined")
            q = q[:, :, query_rows]
        implementation = "sdpa" if self.config is None else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        options = {"scaling": self.scaling, "dropout": 0.0}  # these models train without attention dropout
        if num_context_tokens is None or num_context_tokens >= seq:
            out = attention(self, q, k, v, None, **options)[0]
        else:
            # Two unmasked calls instead of one masked call: every backend (flash included) keeps its fast path.
            n = num_context_tokens
            context_out = attention(self, q[:, :, :n], k[:, :, :n], v[:, :, :n], None, **options)[0]
            target_out = attention(self, q[:, :, n:], k, v, None, **options)[0]
            out = torch.cat([context_out, target_out], dim=1)
        # out: [B, rows, heads, head_dim]; the camera transform works on [B, heads, rows, head_dim].
        if camera_transform is not None:
            out = camera_transform.transform_output(out.transpose(1, 2), rows=query_rows, sequence_length=seq)
            out = out.transpose(1, 2)
        return self.proj(out.reshape(batch, out.shape[1], dim))


class Block(GradientCheckpointingLayer):
    """Pre-norm Transformer block: ``x + ls1(attn(norm1(x))) ; x + ls2(mlp(norm2(x)))``.

    With ``query_rows`` (a contiguous slice) only those rows are computed and returned: what a last
    block needs when the rows after it are discarded anyway (they still act as keys and values).
    ``model.activation_checkpointing_enable()`` recomputes each block in the backward pass instead of keeping
    its activations (transformers' ``GradientCheckpointingLayer``; off by default and in eval mode).
    ``config`` is the model's config, whose ``_attn_implementation`` picks the attention kernel (see ``Attention``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        qk_norm: Optional[str] = None,
        qk_norm_eps: Optional[float] = None,
        norm_eps: float = 1e-5,
        init_values: Optional[float] = None,
        config: Optional[PreTrainedConfig] = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, qk_norm_eps, config=config)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, query_rows: Optional[slice] = None, **attention_kwargs) -> torch.Tensor:
        """``x [B, N, C]`` -> ``[B, N, C]`` (``[B, rows, C]`` with ``query_rows``)."""
        residual = x if query_rows is None else x[:, query_rows]
        # Each branch's fresh output takes the residual in place and becomes the stream: the attention output is
        # not kept alive through the MLP, where the block's memory peaks, and no third [B, N, C] tensor is made.
        x = _add_residual(self.ls1(self.attn(self.norm1(x), query_rows=query_rows, **attention_kwargs)), residual)
        return _add_residual(self.ls2(self.mlp(self.norm2(x))), x)


def _add_residual(update: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + update``, written into ``update`` (a branch output nothing else holds) when that keeps the dtype
    the sum would have (not for a bf16 branch on an fp32 stream under autocast)."""
    if update.dtype != residual.dtype:
        return residual + update
    update += residual
    return update


def patch_grid_positions(height: int, width: int, device=None, offset: int = 0) -> torch.Tensor:
    """Row-major ``[height*width, 2]`` integer (row, col) positions, shifted by ``offset``."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return grid + offset


@torch.compiler.disable  # reads values back to the host: torch.compile runs it as it is
def check_finite_tensors(values: dict, shape_hint: str) -> None:
    """Raise a ``ValueError`` unless every ``name -> value`` is a floating-point tensor without NaN or infinite
    entries; the values are read back with one host synchronisation for all of them.

    Args:
        values: what the caller calls each tensor (``"latents"``, ``"field_targets['rgb']"``) -> the tensor.
        shape_hint: the expected layout, for the message (``"[B, Q, C]"``).
    """
    for name, value in values.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor {shape_hint}, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor {shape_hint}, got dtype {value.dtype}")
    if not values:
        return
    device = next(iter(values.values())).device
    finite = torch.stack([torch.isfinite(value).all().to(device) for value in values.values()])
    for name, ok in zip(values, finite.tolist()):
        if not ok:
            raise ValueError(f"{name} contains NaN or infinite values")


def check_finite_tensor(name: str, value, shape_hint: str) -> None:
    """:func:`check_finite_tensors` for one tensor."""
    check_finite_tensors({name: value}, shape_hint)


class RefuseMostlyMissingWeights:
    """Mixin for ``PreTrainedModel`` classes: ``from_pretrained`` raises instead of returning a mostly random model
    when the checkpoint holds fewer than half of the model's tensors (a folder saved by another model class, e.g. a
    Spa3R folder given to ``VGGTModel``), where transformers would only log a table of missing keys."""

    # State-dict prefixes that training checkpoints may leave out (frozen teachers loaded from their own sources).
    _omitted_in_training_checkpoints: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        allow_omitted = kwargs.pop("allow_omitted_teachers", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            # safetensors' own text ("incomplete metadata, file not fully covered") names no file.
            folder = Path(str(pretrained_model_name_or_path))
            files = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
            where = f"{pretrained_model_name_or_path} ({', '.join(files)})" if files else str(pretrained_model_name_or_path)
            raise ValueError(
                f"could not read the weights of {where}: {err}. A weights file is damaged or incomplete (an "
                "interrupted download or save?): fetch or save it again."
            ) from None
        missing, total = sorted(info["missing_keys"]), len(model.state_dict())
        omitted = [k for k in missing if cls._omitted_in_training_checkpoints and k.startswith(cls._omitted_in_training_checkpoints)]
        if omitted and not allow_omitted and len(omitted) == len(missing):
            raise ValueError(
                f"{pretrained_model_name_or_path} is a training checkpoint without the frozen teachers ({len(omitted)} "
                f"tensors under {list(cls._omitted_in_training_checkpoints)}): load it with "
                "spa3_vlm.training.psfm.load_training_checkpoint, which takes them from the sources its config names"
            )
        if allow_omitted:
            missing = [k for k in missing if k not in set(omitted)]
        if total and 2 * len(missing) > total:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds almost none of {cls.__name__}'s weights ({len(missing)} of "
                f"{total} tensors missing, e.g. {missing[:3]}): it was saved by another model class. Load it with "
                "AutoModel.from_pretrained, or with the class that saved it."
            )
        return (model, info) if wants_info else model
