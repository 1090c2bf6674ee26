"""Parity beyond the fixture's sizes: Spa3R against an independent, deliberately naive implementation of
the reference maths (explicit rotation angles, per-token matrices with a generic inverse, explicit
softmax), for random seeds, image sizes, view counts, context splits and batch sizes.

The naive code below follows the fixture README's "Math contract" and shares no code with the package.
"""

import math

import pytest
import torch

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction

torch.set_default_dtype(torch.float32)


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rms_norm(x, weight):
    eps = torch.finfo(x.dtype).eps
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def mlp(x, sd, prefix):
    x = x @ sd[prefix + "fc1.weight"].T + sd[prefix + "fc1.bias"]
    return gelu(x) @ sd[prefix + "fc2.weight"].T + sd[prefix + "fc2.bias"]


def rotate_pairs(x, first, second, angle):
    """Rotate the pair (x[first], x[second]) by ``angle`` (vectorised over the leading dims)."""
    a, b = x[..., first].clone(), x[..., second].clone()
    out = x.clone()
    out[..., first] = a * torch.cos(angle) - b * torch.sin(angle)
    out[..., second] = a * torch.sin(angle) + b * torch.cos(angle)
    return out


def rope2d(x, positions, base=100.0):
    """VGGT 2D RoPE: x [T, d], positions [T, 2] (row, col)."""
    d = x.shape[-1]
    half = d // 2
    for axis in range(2):
        for j in range(half // 2):
            freq = base ** (-2 * j / half)
            first, second = axis * half + j, axis * half + j + half // 2
            x = rotate_pairs(x, first, second, positions[:, axis].double().float() * freq)
    return x


def attention(x, sd, prefix, heads, transform=None):
    """Naive multi-head attention over x [T, C]. ``transform(q, k, v) -> (q, k, v, out_fn)`` per head."""
    tokens, dim = x.shape
    d = dim // heads
    qkv = x @ sd[prefix + "qkv.weight"].T + sd[prefix + "qkv.bias"]
    q_all, k_all, v_all = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
    outputs = []
    for h in range(heads):
        q = rms_norm(q_all[:, h * d : (h + 1) * d], sd[prefix + "q_norm.weight"])
        k = rms_norm(k_all[:, h * d : (h + 1) * d], sd[prefix + "k_norm.weight"])
        v = v_all[:, h * d : (h + 1) * d]
        q, k, v, finish = transform(q, k, v)
        weights = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)
        outputs.append(finish(weights @ v))
    return torch.cat(outputs, -1) @ sd[prefix + "proj.weight"].T + sd[prefix + "proj.bias"]


def transformer(x, sd, prefix, depth, heads, transform):
    x = torch.cat([sd[prefix + "register_tokens"][0], x])
    for i in range(depth):
        p = f"{prefix}blocks.{i}."
        h = layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        x = x + attention(h, sd, p + "attn.", heads, transform)
        h = layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        x = x + mlp(h, sd, p + "mlp.")
    x = layer_norm(x, sd[prefix + "norm.weight"], sd[prefix + "norm.bias"], 1e-6)
    return x[sd[prefix + "register_tokens"].shape[1] :]


def naive_encode(sd, f_ctx, grid, heads, num_registers):
    """f_ctx [Vc, N, Cb] of one sample -> latents [Q, C]."""
    x = f_ctx.reshape(-1, f_ctx.shape[-1]) @ sd["spa3r.projection.weight"].T + sd["spa3r.projection.bias"]
    queries = sd["spa3r.query_embed.weight"]
    rows = torch.arange(grid[0]).repeat_interleave(grid[1])
    cols = torch.arange(grid[1]).repeat(grid[0])
    patch_pos = torch.stack([rows, cols], -1).repeat(f_ctx.shape[0], 1) + 1
    positions = torch.cat([torch.zeros(num_registers + queries.shape[0], 2, dtype=torch.long), patch_pos])

    def transform(q, k, v):
        return rope2d(q, positions), rope2d(k, positions), v, lambda o: o

    out = transformer(torch.cat([queries, x]), sd, "spa3r.encoder.", 2, heads, transform)
    return out[: queries.shape[0]]


def naive_decode(sd, latents, extrinsic, intrinsic, image_size, heads, num_registers):
    """One view: latents [Q, C], extrinsic [4, 4] w2c, intrinsic [3, 3] px -> decoder features [N, C]."""
    height, width = image_size
    hp, wp = height // 14, width // 14
    fx, fy, cx, cy = intrinsic[0, 0] / 14, intrinsic[1, 1] / 14, intrinsic[0, 2] / 14, intrinsic[1, 2] / 14
    rays = []
    for i in range(hp):
        for j in range(wp):
            direction = torch.stack([(j + 0.5 - cx) / fx, (i + 0.5 - cy) / fy, torch.tensor(1.0)])
            rays.append(direction / direction.norm().clamp_min(1e-3))
    ray_tokens = torch.stack(rays) @ sd["pose_tokenizer.weight"].T + sd["pose_tokenizer.bias"]
    kn = torch.eye(4)
    kn[0, 0], kn[1, 1] = intrinsic[0, 0] / width, intrinsic[1, 1] / height
    kn[0, 2], kn[1, 2] = intrinsic[0, 2] / width - 0.5, intrinsic[1, 2] / height - 0.5
    projection = (kn.double() @ extrinsic.double()).float()
    projection_inv = torch.linalg.inv(projection.double()).float()
    n = hp * wp
    start = num_registers + latents.shape[0]

    def transform(q, k, v):
        d = q.shape[-1]
        xs = torch.arange(n) % wp
        ys = torch.arange(n) // wp

        def apply(t, matrix, sign):
            t = t.clone()
            spatial = t[start:]
            groups = spatial[:, : d // 2].reshape(n, d // 8, 4)
            spatial = torch.cat([(groups @ matrix.T).reshape(n, d // 2), spatial[:, d // 2 :]], -1)
            nf = d // 8
            for block, pos in ((d // 2, xs), (3 * d // 4, ys)):
                for f in range(nf):
                    angle = sign * pos.float() * (100.0 ** (-f / nf))
                    spatial = rotate_pairs(spatial, block + f, block + nf + f, angle)
            t[start:] = spatial
            return t

        # q: P^T g, k and v: P^-1 g, RoPE rotating by -theta; outputs: P g, rotating back by +theta.
        return (
            apply(q, projection.T, -1),
            apply(k, projection_inv, -1),
            apply(v, projection_inv, -1),
            lambda o: apply(o, projection, +1),
        )

    out = transformer(torch.cat([latents, ray_tokens]), sd, "decoder.", 2, heads, transform)
    return out[latents.shape[0] :]


def random_perturb(model, seed):
    """Random weights everywhere (the default init leaves norms at 1 and biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("spa3r.", "pose_tokenizer", "decoder")):
                param.add_(0.2 * torch.randn(param.shape, generator=g))


@pytest.mark.parametrize(
    "seed,batch,views,context,size",
    [(0, 1, 3, [0, 2], (56, 70)), (1, 2, 4, [0, 1, 3], (42, 98)), (2, 1, 2, [0], (70, 42)), (3, 2, 5, [0, 4], (28, 28))],
)
def test_encoder_and_decoder_match_naive_maths(seed, batch, views, context, size):
    torch.manual_seed(seed)
    config = Spa3RConfig(
        hidden_size=32, num_attention_heads=2, num_queries=6, num_encoder_layers=2, num_decoder_layers=2,
        backbone_hidden_size=24, target_heads={"geo": 24}, use_depth_probe=False,
    )  # fmt: skip
    model = Spa3RForFieldPrediction(config).eval()
    random_perturb(model, seed)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(100 + seed)
    height, width = size
    grid = (height // 14, width // 14)
    f_ctx = torch.randn(batch, len(context), grid[0] * grid[1], 24, generator=g)
    extrinsics = torch.eye(4).repeat(batch, views, 1, 1)
    angles = torch.rand(batch, views, 3, generator=g)
    for b in range(batch):
        for v in range(views):
            rx, ry, rz = angles[b, v]
            rot_x = torch.tensor([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
            rot_y = torch.tensor([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
            rot_z = torch.tensor([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
            extrinsics[b, v, :3, :3] = rot_z @ rot_y @ rot_x
    extrinsics[..., :3, 3] = torch.randn(batch, views, 3, generator=g)
    intrinsics = torch.zeros(batch, views, 3, 3)
    intrinsics[..., 0, 0] = width * (0.6 + torch.rand(batch, views, generator=g))
    intrinsics[..., 1, 1] = height * (0.6 + torch.rand(batch, views, generator=g))
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = width / 2, height / 2, 1

    with torch.no_grad():
        latents = model.spa3r.encode_tokens(f_ctx, grid)
        field = model.decode_field(latents, extrinsics, intrinsics, size)
        for b in range(batch):
            naive_latents = naive_encode(sd, f_ctx[b], grid, 2, 4)
            assert (latents[b] - naive_latents).abs().max() <= 1e-4
            for v in range(views):
                naive = naive_decode(sd, latents[b], extrinsics[b, v], intrinsics[b, v], size, 2, 4)
                assert (field["hidden_states"][b, v] - naive).abs().max() <= 1e-4
