"""VGGT's tracking head: shapes, correlation / embedding conventions, the tracker's symmetries, conversion, errors.

No reference numbers exist for the tracking head, so these tests pin properties a wrong implementation breaks: naive
re-computations of the correlation sampling and the position embedding, the window order, view 0 pinned to the
queries, permutation equivariance, independence of batch samples and of points outside the space attention.
"""

import ast
import json
import math

import pytest
import torch
import torch.nn.functional as F

from spa3_vlm import VGGTConfig, VGGTModel
from spa3_vlm.conversion import vggt_from_reference
from spa3_vlm.modeling_vggt_track import (
    CorrelationPyramid,
    VGGTTracker,
    VGGTTrackHead,
    flow_embedding,
    grid_position_embedding,
)

TINY = dict(
    image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, patch_embed_type="conv",
    camera_trunk_depth=1, camera_num_heads=2, dpt_features=8, dpt_out_channels=[4, 8, 8, 8], dpt_intermediate_layers=[0, 1, 1, 2],
    use_track_head=True, track_features=16, track_num_iterations=3, track_corr_levels=3, track_corr_radius=2,
    track_hidden_size=32, track_num_attention_heads=4, track_depth=2, track_num_virtual_tracks=4,
)  # fmt: skip


def tiny_config(**overrides):
    return VGGTConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VGGTModel(tiny_config()).eval()


def tiny_tracker(seed=0, **overrides):
    torch.manual_seed(seed)
    args = dict(latent_dim=16, hidden_size=32, num_heads=4, depth=2, num_virtual_tracks=4, corr_levels=2, corr_radius=2)
    return VGGTTracker(**{**args, **overrides}).eval()


def random_queries(batch, points, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, points, 2, generator=generator) * torch.tensor([width - 1.0, height - 1.0])


@pytest.mark.parametrize("batch,views,height,width,points", [(1, 3, 56, 70, 4), (2, 2, 42, 84, 1), (1, 1, 28, 28, 3)])
def test_output_shapes_and_view_zero_holds_the_queries(model, batch, views, height, width, points):
    images = torch.rand(batch, views, 3, height, width, generator=torch.Generator().manual_seed(1))
    queries = random_queries(batch, points, height, width)
    with torch.no_grad():
        fmaps = model.track_head.feature_extractor(model.aggregator(images), images, model.config.patch_start_idx)
        out = model(images, query_points=queries, compute_cameras=False, compute_depth=False)
    assert fmaps.shape == (batch, views, 16, height // 2, width // 2)
    assert out.tracks.shape == (batch, views, points, 2)
    assert len(out.track_list) == 3 and all(t.shape == out.tracks.shape for t in out.track_list)
    assert out.tracks is out.track_list[-1]
    assert out.track_visibility.shape == out.track_confidence.shape == (batch, views, points)
    for probability in (out.track_visibility, out.track_confidence):
        assert ((probability > 0) & (probability < 1)).all()
    for step in out.track_list:
        assert torch.equal(step[:, 0], queries)  # exactly, not only approximately
    if views > 1:  # the other views move, and every refinement step moves them further
        assert not torch.allclose(out.track_list[0][:, 1:], out.track_list[1][:, 1:])


def test_feature_maps_do_not_depend_on_frame_chunking(model):
    images = torch.rand(2, 3, 3, 28, 42)
    extractor = model.track_head.feature_extractor
    assert not hasattr(extractor.scratch, "output_conv2") and extractor.scratch.output_conv1.out_channels == 16
    with torch.no_grad():
        tokens = model.aggregator(images)
        whole = extractor(tokens, images, model.config.patch_start_idx, frames_chunk_size=None)
        chunked = extractor(tokens, images, model.config.patch_start_idx, frames_chunk_size=2)
        alone = extractor([t[:, 2:] for t in tokens], images[:, 2:], model.config.patch_start_idx)
    assert whole.shape == (2, 3, 16, 14, 21)
    assert torch.allclose(chunked, whole, atol=1e-6) and torch.allclose(alone, whole[:, 2:], atol=1e-6)


def test_only_the_layers_the_heads_need_give_the_same_tracks(model):
    images = torch.rand(1, 2, 3, 28, 42)
    queries = random_queries(1, 3, 28, 42)
    with torch.no_grad():
        full = model(images, query_points=queries, compute_depth=False)
        lean = model(images, query_points=queries, compute_depth=False, output_all_layers=False)
    assert lean.aggregated_tokens[0] is not None and torch.equal(lean.tracks, full.tracks)


def naive_pooled(fmap):
    """``[C, h, w]`` -> 2x2 block means (remainder rows / columns dropped), by explicit loops."""
    channels, height, width = fmap.shape
    out = torch.zeros(channels, height // 2, width // 2, dtype=fmap.dtype)
    for i in range(height // 2):
        for j in range(width // 2):
            out[:, i, j] = fmap[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2))
    return out


def naive_bilinear(image, x, y):
    """Bilinear value of ``image [h, w]`` at pixel (x, y), zero outside."""
    height, width = image.shape
    x0, y0 = math.floor(x), math.floor(y)
    value = 0.0
    for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            if 0 <= xi < width and 0 <= yi < height:
                value += wx * wy * image[yi, xi].item()
    return value


def test_correlation_sampling_equals_a_naive_loop():
    torch.manual_seed(0)
    batch, views, points, channels, height, width, levels, radius = 1, 2, 3, 4, 9, 11, 3, 1
    fmaps = torch.randn(batch, views, channels, height, width, dtype=torch.float64)
    targets = torch.randn(batch, views, points, channels, dtype=torch.float64)
    # Fractional positions, one near the left border (part of the window falls outside) and one beyond the right.
    coords = torch.tensor([[3.3, 4.6], [0.4, 2.2], [10.7, 7.9]], dtype=torch.float64).repeat(batch, views, 1, 1)
    coords[:, 1] += torch.tensor([0.25, -0.5], dtype=torch.float64)
    pyramid = CorrelationPyramid(fmaps, levels, radius)
    sampled = pyramid.sample(targets, coords)
    assert sampled.shape == (batch, views, points, levels * (2 * radius + 1) ** 2) and pyramid.num_channels == 27

    expected = torch.zeros_like(sampled)
    for s in range(views):
        maps = [fmaps[0, s]]
        for _ in range(levels - 1):
            maps.append(naive_pooled(maps[-1]))
        for n in range(points):
            x, y = coords[0, s, n].tolist()
            index = 0
            for level, fmap in enumerate(maps):
                corr = torch.einsum("c,chw->hw", targets[0, s, n], fmap) / math.sqrt(channels)
                for dx in range(-radius, radius + 1):  # the x offset is the slow index
                    for dy in range(-radius, radius + 1):
                        expected[0, s, n, index] = naive_bilinear(corr, x / 2**level + dx, y / 2**level + dy)
                        index += 1
    assert torch.allclose(sampled, expected, atol=1e-10)


def test_correlation_of_a_shifted_view_peaks_at_the_shift():
    """Features of equal norm: a track feature correlates most with itself, so the window maximum sits where the
    query's pixel moved to (the x offset is the slow index of the window)."""
    torch.manual_seed(0)
    channels, height, width, radius = 8, 12, 14, 3
    first = F.normalize(torch.randn(channels, height, width), dim=0) * math.sqrt(channels)
    shift_x, shift_y = 2, -1
    second = torch.roll(first, shifts=(shift_y, shift_x), dims=(1, 2))
    fmaps = torch.stack([first, second])[None]
    queries = torch.tensor([[5.0, 6.0], [8.0, 4.0]])
    targets = first[:, queries[:, 1].long(), queries[:, 0].long()].T  # [N, C]
    pyramid = CorrelationPyramid(fmaps, num_levels=1, radius=radius)
    sampled = pyramid.sample(targets.expand(1, 2, -1, -1), queries.expand(1, 2, -1, -1))
    side = 2 * radius + 1
    centre = radius * side + radius
    assert (sampled[0, 0].argmax(dim=-1) == centre).all()
    assert torch.allclose(sampled[0, 0, :, centre], torch.full((2,), math.sqrt(channels)), atol=1e-5)
    assert (sampled[0, 1].argmax(dim=-1) == (radius + shift_x) * side + (radius + shift_y)).all()


def test_position_embedding_equals_sampling_the_reference_grid():
    dim, height, width = 24, 5, 7
    quarter = dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(height, dtype=torch.float64)[:, None, None] * omega  # [h, 1, D/4]
    cols = torch.arange(width, dtype=torch.float64)[None, :, None] * omega  # [1, w, D/4]
    cols, rows = cols.expand(height, -1, -1), rows.expand(-1, width, -1)
    grid = torch.cat([cols.sin(), cols.cos(), rows.sin(), rows.cos()], dim=-1).float()  # [h, w, D]: [sin(x w) | cos(x w) | sin(y w) | cos(y w)]
    coords = torch.tensor([[0.0, 0.0], [2.3, 1.7], [6.0, 4.0], [5.5, 0.25], [-1.5, 2.0], [8.2, 6.3]])
    normalised = coords * torch.tensor([2 / (width - 1), 2 / (height - 1)]) - 1
    sampled = F.grid_sample(
        grid.permute(2, 0, 1)[None], normalised[None, :, None], mode="bilinear", padding_mode="border", align_corners=True
    )[0, :, :, 0].T
    ours = grid_position_embedding(coords, dim, height, width)
    assert torch.allclose(ours, sampled, atol=1e-6)
    assert torch.equal(ours[0], grid[0, 0]) and torch.equal(ours[2], grid[4, 6])


def test_flow_embedding_layout():
    flows = torch.tensor([[3.0, -7.5]])
    dim = 8
    out = flow_embedding(flows, dim)
    assert out.shape == (1, 16)
    for axis, value in enumerate(flows[0].tolist()):
        for k in range(dim // 2):
            angle = torch.tensor(value * (2 * k) * 1000.0 / dim)
            assert torch.isclose(out[0, axis * dim + 2 * k], angle.sin(), atol=1e-5)
            assert torch.isclose(out[0, axis * dim + 2 * k + 1], angle.cos(), atol=1e-5)


def test_permuting_query_points_permutes_tracks():
    # float64: a random tracker amplifies float32 rounding differences over its iterations
    tracker = tiny_tracker().double()
    fmaps = torch.randn(2, 3, 16, 10, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    queries = random_queries(2, 5, 20, 24).double()
    permutation = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        tracks, visibility, confidence = tracker(queries, fmaps, num_iterations=2)
        tracks_p, visibility_p, confidence_p = tracker(queries[:, permutation], fmaps, num_iterations=2)
    assert torch.allclose(tracks_p[-1], tracks[-1][:, :, permutation], atol=1e-10)
    assert torch.allclose(visibility_p, visibility[:, :, permutation], atol=1e-10)
    assert torch.allclose(confidence_p, confidence[:, :, permutation], atol=1e-10)


def test_points_interact_only_through_the_virtual_tracks():
    """Adding a query point changes the other tracks (space attention); with the point <- virtual cross-attention
    silenced, nothing else connects the points, so the other tracks stay exactly as they were."""
    tracker = tiny_tracker().double()  # float64, as in the permutation test
    fmaps = torch.randn(1, 3, 16, 10, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    queries = random_queries(1, 4, 20, 24).double()
    with torch.no_grad():
        alone = tracker(queries[:, :3], fmaps, num_iterations=2)[0][-1]
        together = tracker(queries, fmaps, num_iterations=2)[0][-1][:, :, :3]
        assert (alone - together).abs().max() > 1e-4
        for block in tracker.updateformer.space_point2virtual_blocks:
            block.cross_attn.out_proj.weight.zero_()
            block.cross_attn.out_proj.bias.zero_()
        alone = tracker(queries[:, :3], fmaps, num_iterations=2)[0][-1]
        together = tracker(queries, fmaps, num_iterations=2)[0][-1][:, :, :3]
    assert torch.allclose(alone, together, atol=1e-10)


def test_update_blocks_keep_the_normalised_input_as_residual():
    """The reference's attention blocks add both branches to ``LN1(x)``, not to ``x``: with both branches silenced a
    block returns ``LN1(x)`` (a standard pre-norm block would return ``x``)."""
    torch.manual_seed(0)
    blocks = tiny_tracker().updateformer
    x, context = torch.randn(2, 5, 32) * 3 + 1, torch.randn(2, 4, 32)
    with torch.no_grad():
        for block in (blocks.time_blocks[0], blocks.space_virtual2point_blocks[0]):
            attention = block.attn if hasattr(block, "attn") else block.cross_attn
            for linear in (attention.out_proj, block.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
            out = block(x) if hasattr(block, "attn") else block(x, context)
            assert torch.allclose(out, block.norm1(x), atol=1e-6)


def test_query_features_clamp_to_the_feature_map_border():
    """Image column W-1 maps to feature column (W-1)/2, half a pixel beyond the last one (W/2 - 1): its query
    feature is the border column's (border padding), which zero iterations expose through the visibility."""
    tracker = tiny_tracker(stride=2)
    fmaps = torch.randn(1, 2, 16, 10, 12, generator=torch.Generator().manual_seed(5))
    queries = torch.tensor([[[23.0, 7.0], [22.0, 7.0], [21.0, 7.0]]])  # feature x = 11.5, 11 (the last column), 10.5
    with torch.no_grad():
        tracks, visibility, _ = tracker(queries, fmaps, num_iterations=0)
    assert tracks == []
    assert torch.allclose(visibility[0, :, 0], visibility[0, :, 1], atol=1e-6)
    assert not torch.allclose(visibility[0, :, 1], visibility[0, :, 2], atol=1e-4)


def test_tracks_stay_at_the_queries_without_updates():
    """With a zero update head every view's track is the query in image pixels (the stride round trip)."""
    tracker = tiny_tracker(stride=2)
    with torch.no_grad():
        tracker.updateformer.flow_head.weight.zero_()
        tracker.updateformer.flow_head.bias.zero_()
        queries = random_queries(1, 3, 20, 24)
        tracks, visibility, _ = tracker(queries, torch.randn(1, 4, 16, 10, 12), num_iterations=2)
    for step in tracks:
        assert torch.allclose(step, queries[:, None].expand(-1, 4, -1, -1), atol=1e-6)
    assert torch.allclose(visibility, visibility[:, :1].expand(-1, 4, -1))  # same features in every view


def test_batch_samples_are_independent(model):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 3, 28, 42, generator=generator)
    queries = random_queries(2, 4, 28, 42)
    changed_images, changed_queries = images.clone(), queries.clone()
    changed_images[1] = torch.rand(3, 3, 28, 42, generator=generator)
    changed_queries[1] = queries[1].flip(0) * 0.5
    with torch.no_grad():
        first = model(images, query_points=queries, compute_cameras=False, compute_depth=False)
        second = model(changed_images, query_points=changed_queries, compute_cameras=False, compute_depth=False)
    assert torch.allclose(first.tracks[0], second.tracks[0], atol=1e-6)
    assert torch.allclose(first.track_visibility[0], second.track_visibility[0], atol=1e-6)
    assert torch.allclose(first.track_confidence[0], second.track_confidence[0], atol=1e-6)
    assert not torch.allclose(first.tracks[1], second.tracks[1])


def test_converted_track_head_round_trips_through_save_pretrained(tmp_path):
    torch.manual_seed(4)
    state = VGGTModel(tiny_config(track_num_attention_heads=8, track_depth=6, track_num_virtual_tracks=64)).state_dict()
    reference_args = dict(
        vggt=dict(img_size=56, patch_size=14, embed_dim=32, enable_point=True, enable_track=True),
        aggregator=dict(depth=3, num_heads=2, patch_embed="conv"),
        camera_head=dict(trunk_depth=1, num_heads=2),
        depth_head=dict(features=8, out_channels=[4, 8, 8, 8], intermediate_layer_idx=[0, 1, 1, 2]),
        track_head=dict(features=16, iters=3, corr_levels=3, corr_radius=2, hidden_size=32),
    )
    model, report = vggt_from_reference(state, return_report=True, **reference_args)
    assert not report.dropped
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["use_track_head"] is True
    assert (tmp_path / "modeling_vggt_track.py").is_file()  # shipped with the model code
    reloaded = VGGTModel.from_pretrained(tmp_path).eval()
    images, queries = torch.rand(1, 2, 3, 28, 42), random_queries(1, 3, 28, 42)
    with torch.no_grad():
        expected = model(images, query_points=queries, compute_depth=False)
        actual = reloaded(images, query_points=queries, compute_depth=False)
    for name in ("tracks", "track_visibility", "track_confidence"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name


def test_hub_module_imports_only_torch_transformers_and_siblings(repo_root):
    source = (repo_root / "src" / "spa3_vlm" / "modeling_vggt_track.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            assert all(alias.name.split(".")[0] in {"math", "torch"} for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1 or node.module.split(".")[0] in {"__future__", "typing", "torch"}, node.module


def test_vggt_1b_track_head_has_the_released_parameter_count(fixtures_dir):
    released = json.loads((fixtures_dir / "vggt_1b_keys.json").read_text())["num_elements_by_prefix"]["track_head"]
    with torch.device("meta"):
        head = VGGTTrackHead(VGGTConfig(use_track_head=True))
    assert sum(p.numel() for p in head.parameters()) == released == 65_941_396


def test_query_point_errors(model):
    images = torch.rand(2, 2, 3, 28, 42)
    good = random_queries(2, 3, 28, 42)
    with pytest.raises(ValueError, match=r"no tracking head; build it with VGGTConfig\(use_track_head=True\)"):
        VGGTModel(tiny_config(use_track_head=False))(images, query_points=good)
    cases = [
        (good[0], r"shape \[B, N, 2\] = \[2, N >= 1, 2\] .*got \(3, 2\)"),
        (torch.zeros(2, 3, 3), r"got \(2, 3, 3\)"),
        (good[:1], r"got \(1, 3, 2\)"),
        (torch.zeros(2, 0, 2), r"got \(2, 0, 2\)"),
        (good.long(), "floating-point tensor .* got torch.int64"),
        (good.tolist(), "floating-point tensor .* got list"),
        (torch.full((2, 3, 2), float("nan")), "NaN"),
        (good + torch.tensor([42.0, 0.0]), r"inside the 28x42 image: x in \[0, 41\], y in \[0, 27\].*got x in \[4"),
        (good - torch.tensor([0.0, 30.0]), r"y in \[-2\d\.\d+, -\d"),
    ]
    for queries, message in cases:
        with pytest.raises(ValueError, match=message):
            model(images, query_points=queries)
    deep = VGGTModel(tiny_config(track_corr_levels=5))
    message = "28x42 are too small for the tracking head: its 5 correlation levels at stride 2 need at least 32"
    with pytest.raises(ValueError, match=message):
        deep(images, query_points=good)
    with pytest.raises(ValueError, match="feature maps of 7x9 are too small for 4 correlation levels"):
        CorrelationPyramid(torch.zeros(1, 1, 2, 7, 9), num_levels=4, radius=1)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(track_features=6), "track_features must be divisible by 4"),
        (dict(track_hidden_size=30), "track_hidden_size 30 must be divisible by track_num_attention_heads 4"),
        (dict(track_corr_levels=0), "track_corr_levels must be an int >= 1, got 0"),
        (dict(track_stride=1.5), "track_stride must be an int >= 1, got 1.5"),
        (dict(dpt_intermediate_layers=[0, 1, 2, 3]), r"dpt_intermediate_layers \[0, 1, 2, 3\] must index the 3"),
    ],
)
def test_bad_track_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(use_depth_head=False, use_point_head=False, **overrides)
