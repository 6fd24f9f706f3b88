"""What one unit of a comparison scale costs here: a search step per space and a retraining step of DARTS_V2.

Steps run on fixed random inputs with the device policy's defaults (as the jobs run them), 2
threads, median of timed steps after a warm-up; the estimate multiplies by the scale's steps
(evaluation passes not included). Run it on an otherwise idle machine.

    python benchmarks/compare_cost.py                 # the medium scale
    python benchmarks/compare_cost.py --scale quick --steps 5
"""

from __future__ import annotations

import argparse

import torch

import darts_sg
from darts_sg.speed.accelerate import accelerate, device_policy
from darts_sg.train.architect import Architect, frozen
from darts_sg.experiment.compare import CompareSpec, augment_settings, search_settings
from darts_sg.train.config import AugmentConfig, SearchConfig
from darts_sg.train.engine import weight_step

from bench_steps import cpu_line, median_step_seconds


def median_seconds(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    return median_step_seconds(step, steps)


def batch(size: int, channels_last: bool):
    x = torch.randn(size, 3, 32, 32)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x, torch.randint(0, 10, (size,))


def search_step(config: SearchConfig):
    device = torch.device("cpu")
    policy = device_policy("cpu")
    model = darts_sg.build_supernet(config.ops, C=config.init_channels, layers=config.layers, num_classes=10,
                                    steps=config.nodes, options=config.op_options())  # fmt: skip
    model = accelerate(model, device, policy)
    w_opt = torch.optim.SGD(model.weights(), config.w_lr, momentum=config.w_momentum, weight_decay=config.w_weight_decay)
    architect = Architect(model, config.alpha_lr, config.alpha_weight_decay, order=config.order)
    train, val = batch(config.batch_size, policy.channels_last), batch(config.batch_size, policy.channels_last)

    def step():
        architect.step(train, val, w_opt, config.w_lr)
        with frozen(model.alphas()):
            weight_step(model, w_opt, train, config.grad_clip)

    return step


def augment_step(config: AugmentConfig, genotype: str = "darts_v2"):
    device = torch.device("cpu")
    policy = device_policy("cpu")
    net = darts_sg.build_network(genotype, C=config.init_channels, layers=config.layers, num_classes=10,
                                 auxiliary=config.auxiliary_weight > 0, options=config.op_options())  # fmt: skip
    net = accelerate(net, device, policy)
    net.train()
    opt = torch.optim.SGD(net.parameters(), config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    data = batch(config.batch_size, policy.channels_last)

    def loss_fn(output, y):
        logits, aux = output
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss + config.auxiliary_weight * torch.nn.functional.cross_entropy(aux, y) if aux is not None else loss

    return lambda: weight_step(net.forward_with_aux, opt, data, config.grad_clip, loss_fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    spec = CompareSpec.for_preset(args.scale)
    s_settings, a_settings = search_settings(spec), augment_settings(spec)
    print(f"{cpu_line()}, torch {torch.__version__}, 2 threads; scale `{args.scale}`, median of {args.steps} steps")
    print("| step | batch | s/step | steps per unit | minutes per unit (steps only) |")
    print("|---|---:|---:|---:|---:|")
    search_minutes = []
    for space in spec.spaces:
        config = SearchConfig(**{**s_settings, "ops": space})
        seconds = median_seconds(search_step(config), args.warmup, args.steps)
        n = (config.subset or 25_000) // config.batch_size * config.epochs
        search_minutes.append(seconds * n / 60)
        print(f"| search, {space} | {config.batch_size} | {seconds:.3f} | {n} | {search_minutes[-1]:.1f} |")
    config = AugmentConfig(**a_settings)
    seconds = median_seconds(augment_step(config), args.warmup, args.steps)
    n = (config.train_subset or 50_000) // config.batch_size * config.epochs
    print(f"| augment DARTS_V2 | {config.batch_size} | {seconds:.3f} | {n} | {seconds * n / 60:.1f} |")
    units = len(spec.seeds) * sum(search_minutes) + (len(spec.seeds) * len(spec.spaces) + spec.random * len(spec.spaces)
                                                     + len(spec.references)) * seconds * n / 60  # fmt: skip
    print(f"\nestimate for the whole scale (steps only, retrainings at DARTS_V2's step time): {units / 60:.1f} h")
    print("a lower bound: searched and random cells with inv_res or sg_block edges retrain slower (benchmarks/results.md, "
          "run 9: a searched invres cell's step 3.1x DARTS_V2's)")


if __name__ == "__main__":
    main()
