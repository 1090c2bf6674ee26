"""Analytic FLOP counts of Spa3R and the VGGT aggregator (what ``bench_spa3r.py`` divides by time).

2·m·n·k per Linear, QKᵀ and AV per attention (4·pairs·width), PRoPE's 4x4 camera matmuls; norms, activations,
RoPE, softmax, bias adds and losses are left out. ``tests/test_bench_smoke.py`` checks them against a hand count and
``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

from typing import Optional

from spa3_vlm import Spa3RConfig, VGGTConfig


def linear_flops(rows: int, fan_in: int, fan_out: int) -> int:
    """``2·m·n·k`` of one Linear on ``rows`` tokens (the bias add is ignored)."""
    return 2 * rows * fan_in * fan_out


def block_flops(batch: int, seq: int, dim: int, mlp_hidden: int, attention_pairs: Optional[int] = None) -> dict:
    """Forward FLOPs of one pre-norm Transformer block on ``batch`` sequences of ``seq`` tokens.

    ``linear``: qkv, output projection and the two MLP layers. ``attention``: QKᵀ and AV summed over heads,
    ``2·pairs·dim`` each, where ``pairs`` (query, key) couples are attended (``seq²`` unless masked).
    """
    pairs = seq * seq if attention_pairs is None else attention_pairs
    linear = linear_flops(seq, dim, 3 * dim) + linear_flops(seq, dim, dim)
    linear += linear_flops(seq, dim, mlp_hidden) + linear_flops(seq, mlp_hidden, dim)
    return {"linear": batch * linear, "attention": batch * 4 * pairs * dim}


def mlp_hidden_size(config: Spa3RConfig) -> int:
    return int(config.hidden_size * config.mlp_ratio)


def uses_encoder_prope(config: Spa3RConfig) -> bool:
    return getattr(config, "encoder_camera_encoding", "none") == "prope"


def prope_flops(layers: int, spatial_tokens: int, dim: int) -> int:
    """PRoPE's 4x4 camera matmuls on half of each head's channels of q, k, v and the output, per layer."""
    return layers * 4 * 4 * spatial_tokens * dim


def camera_matrix_flops(cameras: int) -> int:
    """PRoPE's per-camera set-up: K̃·E and E⁻¹·K̃⁻¹ (4x4 products) and -Rᵀt in the rigid inverse."""
    return cameras * (2 * linear_flops(4, 4, 4) + linear_flops(3, 3, 1))


def spa3r_encoder_flops(config: Spa3RConfig, views: int, grid: tuple[int, int], batch: int = 1) -> dict:
    """Forward FLOPs of ``Spa3RModel.encode_tokens`` on ``views`` context views of a ``grid`` patch grid.

    Returns ``projection`` (backbone tokens -> width), ``ray_embedding`` (context ray codes, where configured),
    ``linear`` and ``attention`` of the encoder blocks, ``prope`` and ``camera_matrices`` (zero unless
    ``encoder_camera_encoding="prope"``), ``last_block_skipped`` (negative: the rows the last block does not
    compute, see :func:`last_block_skipped_flops`), ``total``.
    """
    patches = views * grid[0] * grid[1]
    seq = config.num_register_tokens + config.num_queries + patches
    blocks = block_flops(batch, seq, config.hidden_size, mlp_hidden_size(config))
    layers = config.num_encoder_layers
    prope = uses_encoder_prope(config)
    ray_embedding = prope and config.ray_encoding == "plucker"
    out = {
        "projection": linear_flops(batch * patches, config.backbone_hidden_size, config.hidden_size),
        "ray_embedding": linear_flops(batch * patches, config.ray_code_size, config.hidden_size) if ray_embedding else 0,
        "linear": layers * blocks["linear"],
        "attention": layers * blocks["attention"],
        # The last block transforms no output back: it outputs only the query rows, which carry no camera.
        "prope": prope_flops(layers, batch * patches, config.hidden_size) - 4 * batch * patches * config.hidden_size if prope else 0,
        "camera_matrices": camera_matrix_flops(batch * views) if prope else 0,
        "last_block_skipped": -last_block_skipped_flops(config, "encoder", views, grid, batch),
    }
    out["total"] = sum(out.values())
    return out


def spa3r_decoder_flops(config: Spa3RConfig, views: int, grid: tuple[int, int], batch: int = 1) -> dict:
    """Forward FLOPs of ``Spa3RForFieldPrediction.decode_field`` for ``views`` cameras.

    Every view is one decoder sequence ``[registers ; latents ; ray tokens]``. ``prope``: the 4x4 camera
    matrices PRoPE applies to half of each head's channels of q, k, v and the output, on the ray tokens
    (``4 · hidden`` FLOPs per token and tensor). ``heads``: the field heads; ``depth_probe``: the probe;
    ``last_block_skipped`` (negative): the register and latent rows the last block does not compute.
    """
    patches = grid[0] * grid[1]
    sequences = batch * views
    rows = sequences * patches
    seq = config.num_register_tokens + config.num_queries + patches
    dim, hidden, layers = config.hidden_size, mlp_hidden_size(config), config.num_decoder_layers
    blocks = block_flops(sequences, seq, dim, hidden)
    out = {
        "pose_tokenizer": linear_flops(rows, config.ray_code_size, dim),
        "linear": layers * blocks["linear"],
        "attention": layers * blocks["attention"],
        "prope": prope_flops(layers, rows, dim),
        "heads": sum(linear_flops(rows, dim, hidden) + linear_flops(rows, hidden, size) for size in config.target_heads.values()),
        "depth_probe": linear_flops(rows, dim, hidden) + linear_flops(rows, hidden, 1) if config.use_depth_probe else 0,
        "camera_matrices": camera_matrix_flops(sequences),
        "last_block_skipped": -last_block_skipped_flops(config, "decoder", views, grid, batch),
    }
    out["total"] = sum(out.values())
    return out


def spa3r_train_step_flops(config: Spa3RConfig, views: int, context_views: int, grid: tuple[int, int], batch: int = 1) -> dict:
    """Forward + backward FLOPs of a PSFM step without the backbone: encode ``context_views``, decode ``views``.

    Backward is 2x forward, except 1x where only one operand needs a gradient: the encoder's projection
    (frozen backbone tokens in), the pose tokenizer (camera rays in), the depth probe's first layer (it reads
    detached features) and PRoPE (the camera matrices are constants); the camera set-up has no backward.
    """
    encoder = spa3r_encoder_flops(config, context_views, grid, batch)
    decoder = spa3r_decoder_flops(config, views, grid, batch)
    forward = encoder["total"] + decoder["total"]
    rows = batch * views * grid[0] * grid[1]
    probe_first = linear_flops(rows, config.hidden_size, mlp_hidden_size(config)) if config.use_depth_probe else 0
    one_x = encoder["projection"] + encoder["ray_embedding"] + encoder["prope"] + decoder["pose_tokenizer"] + decoder["prope"] + probe_first
    no_backward = encoder["camera_matrices"] + decoder["camera_matrices"]
    backward = 2 * (forward - one_x - no_backward) + one_x
    return {"encoder_forward": encoder["total"], "decoder_forward": decoder["total"], "forward": forward, "backward": backward, "total": forward + backward}


def vggt_aggregator_flops(config: VGGTConfig, views: int, grid: tuple[int, int], batch: int = 1, num_context_views: Optional[int] = None) -> int:
    """Forward FLOPs of the VGGT aggregator (patch embedding + frame and global blocks), no heads.

    With ``num_context_views`` (the masked pass) context tokens attend to context tokens only.
    """
    patches = grid[0] * grid[1]
    dim, hidden = config.hidden_size, int(config.hidden_size * config.mlp_ratio)
    embed = 2 * batch * views * patches * dim * 3 * config.patch_size**2  # the patchify convolution
    if config.patch_embed_type != "conv":  # DINOv2 blocks over [cls ; registers ; patches]
        dino = block_flops(batch * views, 1 + config.num_register_tokens + patches, dim, hidden)
        embed += config.patch_embed_num_layers * (dino["linear"] + dino["attention"])
    per_view = 1 + config.num_register_tokens + patches
    seq = views * per_view
    pairs = None
    if num_context_views is not None and num_context_views < views:
        context = num_context_views * per_view
        pairs = context * context + (seq - context) * seq
    frame = block_flops(batch * views, per_view, dim, hidden)
    global_ = block_flops(batch, seq, dim, hidden, attention_pairs=pairs)
    return embed + config.num_hidden_layers * (frame["linear"] + frame["attention"] + global_["linear"] + global_["attention"])


def last_block_skipped_flops(config: Spa3RConfig, part: str, views: int, grid: tuple[int, int], batch: int = 1) -> int:
    """Forward FLOPs the last block of the encoder / decoder skips because its output rows are dropped.

    ``encode_tokens`` keeps only the query rows and ``decode_field`` only the ray-token rows, and
    ``Spa3RTransformer(output_rows=...)`` computes just those in its last block: the other rows' attention
    rows, output projection and MLP are skipped (and, in a PRoPE encoder, the context rows' output transform,
    which :func:`spa3r_encoder_flops` leaves out of ``prope``). Their keys and values are still needed, and q
    comes out of the shared qkv projection of every row.
    """
    dim, hidden = config.hidden_size, mlp_hidden_size(config)
    patches = grid[0] * grid[1]
    if part == "encoder":
        sequences, seq = batch, config.num_register_tokens + config.num_queries + views * patches
        kept = config.num_queries
    elif part == "decoder":
        sequences, seq = batch * views, config.num_register_tokens + config.num_queries + patches
        kept = patches
    else:
        raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
    dropped = seq - kept
    per_row = linear_flops(1, dim, dim) + linear_flops(1, dim, hidden) + linear_flops(1, hidden, dim)  # out, MLP
    return sequences * dropped * (per_row + 4 * seq * dim)


def train_step_skipped_flops(config: Spa3RConfig, views: int, context_views: int, grid: tuple[int, int], batch: int = 1) -> int:
    """Forward + backward FLOPs a PSFM step saves by computing only the kept rows of both last blocks (without the
    PRoPE output transform a camera-aware encoder also skips, a 4·width-per-token sliver)."""
    forward = last_block_skipped_flops(config, "encoder", context_views, grid, batch) + last_block_skipped_flops(config, "decoder", views, grid, batch)
    return 3 * forward
