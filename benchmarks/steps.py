"""The training steps the benchmarks time and count, built as the jobs build them.

`build_step` returns one step of first- or second-order search (the jobs' `SearchStep`) or of
retraining DARTS_V2 (the jobs' `AugmentStep`) as a closure, with every speed switch from the
caller on the CPU and the device's policy on CUDA.
"""

from __future__ import annotations

STEP_KINDS = ("search-fo", "search-so", "retrain")  # first- and second-order search steps, DARTS_V2's retraining step


def build_step(kind: str, opts: dict, space: str, batch_size: int | None = None, device: str = "cpu"):
    """One training step of `kind` at the DARTS settings, as a closure; returns (step, images per step).

    On the CPU every speed switch comes from `opts`; on CUDA the device's policy, with `opts`'
    amp and compile and any other switch `opts` names.
    """
    if kind not in STEP_KINDS:
        raise ValueError(f"unknown step kind {kind!r}: use one of {', '.join(STEP_KINDS)}")
    import dataclasses

    import torch

    import darts_sg
    from darts_sg.speed.accelerate import Acceleration, accelerate, device_policy

    device = torch.device(device)
    if device.type == "cpu":
        # every switch the row does not name is off (rows written before a switch existed ran without it)
        switches = {f.name: opts.get(f.name, False) for f in dataclasses.fields(Acceleration)}
        acceleration = Acceleration(**{**switches, "amp": opts["amp"], "cudnn_benchmark": False})
        foreach, skip_none = opts["foreach"], opts["skip_none"]  # foreach None: the options of opts["optimizer_device"]
    else:
        named = {f.name: opts[f.name] for f in dataclasses.fields(Acceleration) if f.name in opts}  # e.g. an A/B's switch
        fixed = {"amp": opts["amp"], "compile": opts["compile"], "cuda_graphs": opts.get("graphs", False)}
        acceleration = dataclasses.replace(device_policy(device.type), **{**named, **fixed})
        foreach, skip_none = None, True  # torch's default optimizers; `none` never built, as in the jobs
    memory_format = torch.channels_last if acceleration.channels_last else torch.contiguous_format

    def batch(size):
        x = torch.randn(size, 3, 32, 32).contiguous(memory_format=memory_format)
        return x.to(device), torch.randint(0, 10, (size,)).to(device)

    if kind.startswith("search"):
        from darts_sg.train.config import SearchConfig
        from darts_sg.jobs.search import SearchStep

        images = batch_size or 64
        model = darts_sg.build_supernet(
            space, C=16, layers=8, num_classes=10, partial_channels=opts.get("partial_channels", 1), skip_none=skip_none,
        )  # fmt: skip
        model = accelerate(model, device, acceleration)
        config = SearchConfig(order=2 if kind == "search-so" else 1, grad_clip=5.0)  # the DARTS settings
        search_step = SearchStep(model, config, device, acceleration, foreach=foreach, optimizer_device=opts.get("optimizer_device"))
        train, val = batch(images), batch(images)

        def step():
            search_step(train, val)

        return step, images
    images = batch_size or 96
    from darts_sg.jobs.augment import AugmentStep
    from darts_sg.train.config import AugmentConfig

    model = darts_sg.build_network("darts_v2", C=36, layers=20, num_classes=10, auxiliary=True)
    model = accelerate(model, device, acceleration)
    model.drop_path_prob = 0.2
    model.train()
    config = AugmentConfig(grad_clip=5.0)  # the DARTS settings: lr 0.025, momentum 0.9, weight decay 3e-4, aux 0.4
    augment_step = AugmentStep(model, config, device, acceleration, foreach=foreach, optimizer_device=opts.get("optimizer_device"))
    data = batch(images)

    def step():
        augment_step(*data)

    return step, images
