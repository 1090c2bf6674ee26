"""torch.compile against eager for the Spa3R encoder, decoder, VGGT aggregator and a PSFM training step.

    python bench/bench_spa3r.py compile [--quick] [--sizes tiny base]

Each region is compiled whole (``fullgraph=True``, inductor): the encoder ``Spa3RModel._encode_tokens``, the decoder
``Spa3RForFieldPrediction._decode_field`` (decoder, heads and probe), the aggregator ``VGGTAggregator.forward`` and a
PSFM step without the backbone that calls the compiled encoder and decoder (forward, losses, backward). The eager side
runs the same unchecked functions, so the ratio is the compiler's alone. Compile time (the first call, including the
first run) is reported apart; speed is the median of per-round ratios ``eager s / compiled s`` (interleaved rounds),
with the largest difference between the two outputs.
"""

from __future__ import annotations

import time

import torch

# (name, workload, size, views, image (H, W)); the quick set is what tests/test_bench_smoke.py runs.
CASES = {
    "tiny": [
        ("encoder", "tiny", 8, (112, 112)),
        ("decoder", "tiny", 8, (112, 112)),
        ("aggregator", "tiny", 8, (112, 112)),
        ("train_step", "tiny", 8, (112, 112)),
    ],
    "base": [
        ("encoder", "base", 4, (224, 224)),
        ("decoder", "base", 4, (224, 224)),
        ("aggregator", "mid", 4, (224, 224)),
        ("train_step", "base", 2, (224, 224)),
    ],
}
QUICK_CASES = [("encoder", "tiny", 2, (28, 28))]


def region_functions(workload: str, size: str, views: int, image_size: tuple[int, int], device: torch.device):
    """``(model, eager callable, compiled callable)`` computing the same output tensor."""
    from common import autocast
    from spa3r_workloads import aggregator_case, build_model, random_field_batch, spa3r_config

    if workload == "aggregator":
        model, images, keep = aggregator_case(size, views, image_size, device)
        compiled = torch.compile(model.aggregator, fullgraph=True)

        def call(aggregator):
            def run():
                with torch.no_grad(), autocast(device):
                    return aggregator(images, keep_layers=keep)[-1]

            return run

        return model, call(model.aggregator), call(compiled)
    config = spa3r_config(size)
    model = build_model(config, device)
    context = max(1, views // 2) if workload == "train_step" else views
    data = random_field_batch(config, views, context, image_size, device)
    encode = (model.spa3r._encode_tokens, torch.compile(model.spa3r._encode_tokens, fullgraph=True))
    decode = (model._decode_field, torch.compile(model._decode_field, fullgraph=True))
    latents = torch.randn(1, config.num_queries, config.hidden_size, generator=torch.Generator().manual_seed(1)).to(device)

    def call(which: int):
        if workload == "encoder":
            def run():
                with torch.no_grad(), autocast(device):
                    return encode[which](data.context_tokens, data.grid, None, None, None, None)
        elif workload == "decoder":
            def run():
                with torch.no_grad(), autocast(device):
                    return decode[which](latents, data.extrinsics, data.intrinsics, data.image_size)["hidden_states"]
        else:
            def run():
                model.zero_grad(set_to_none=True)
                with autocast(device):
                    encoded = encode[which](data.context_tokens, data.grid, None, None, None, None)
                    field = decode[which](encoded, data.extrinsics, data.intrinsics, data.image_size)
                    loss = torch.stack(list(model.field_losses(field, data.targets, model.heads.keys()).values())).sum()
                loss.backward()
                return loss.detach()
        return run

    if workload == "train_step":
        model.train()
    else:
        model.eval()
    return model, call(0), call(1)


def run_compile(args, device: torch.device) -> dict:
    import torch._dynamo
    import torch._inductor.config
    from common import format_table, interleaved_times, ratios, summarize, sync

    # One compile worker: this measures the compiled code, and parallel workers would slow a shared machine.
    torch._inductor.config.compile_threads = 1
    cases = QUICK_CASES if args.quick else [case for size in args.sizes for case in CASES[size]]
    rows = []
    for workload, size, views, image_size in cases:
        torch._dynamo.reset()
        model, eager, compiled = region_functions(workload, size, views, image_size, device)
        expected = eager()
        start = time.perf_counter()
        got = compiled()
        sync(device)
        compile_seconds = time.perf_counter() - start
        times = interleaved_times({"eager": eager, "compiled": compiled}, device, args.repeats, args.warmup, args.min_seconds)
        scale = float(expected.abs().max()) or 1.0
        rows.append(
            {
                "workload": workload,
                "size": size,
                "views": views,
                "image_size": list(image_size),
                "compile_seconds": compile_seconds,
                "seconds_eager": summarize(times["eager"]),
                "seconds_compiled": summarize(times["compiled"]),
                "speedup": summarize(ratios(times["eager"], times["compiled"])),
                "max_abs_diff": float((got.float() - expected.float()).abs().max()),
                "max_abs": scale,
            }
        )
        del model, eager, compiled

    def stat(summary, scale=1.0):
        return f"{summary['median'] * scale:.3g} [{summary['q1'] * scale:.3g}, {summary['q3'] * scale:.3g}]"

    print(f"torch.compile (inductor, fullgraph) vs eager on {device}; median [q1, q3] over {args.repeats} rounds; "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    table = format_table(
        ["workload", "size", "views", "image", "compile s", "eager s", "compiled s", "speedup", "max diff / max"],
        [[r["workload"], r["size"], r["views"], "x".join(map(str, r["image_size"])), f"{r['compile_seconds']:.1f}",
          stat(r["seconds_eager"]), stat(r["seconds_compiled"]), stat(r["speedup"]), f"{r['max_abs_diff'] / r['max_abs']:.1e}"]
         for r in rows],
    )  # fmt: skip
    print(table)
    return {"benchmark": "spa3r_compile", "rows": rows, "table": table}
