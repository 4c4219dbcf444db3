"""MAE pretraining throughput: MindSpore train step (graph mode) against the torch twin's
fwd + bwd + AdamW, same preset, batch, CPU and run. Not collected by pytest.

    .venv/bin/python tests/benchmarks/bench_train.py [--preset mae_vit_base_patch16] [--batch 8] [--steps 3]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402


def timed(step, steps):
    """First call (wall s), then the median wall and process-CPU seconds of `steps` more."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return first, float(np.median(walls)), float(np.median(cpus))


def bench_torch(config, images, noise, steps):
    import torch

    from maeconv.convert.twins import create_model
    from maeconv.models import PRETRAIN

    torch.manual_seed(0)
    model = create_model(config, PRETRAIN, "torch").train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    x, n = torch.from_numpy(images), torch.from_numpy(noise)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(x, None, n)[0]
        loss.backward()
        optimizer.step()
        return loss.item()

    return timed(step, steps)


def bench_mindspore(config, images, noise, steps):
    import mindspore as ms

    from maeconv.convert.twins import create_model
    from maeconv.models import PRETRAIN
    from maeconv.runtimes.ascend.optim import AdamW, parameter_groups
    from maeconv.runtimes.ascend.steps import PretrainLoss, TrainStep

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    model = create_model(config, PRETRAIN, "mindspore")
    model.set_train(True)
    params = model.trainable_params()
    names = {id(p): n for n, p in model.parameters_and_names()}
    groups = parameter_groups([(names[id(p)], tuple(p.shape)) for p in params], 0.05)
    step_fn = TrainStep(PretrainLoss(model), AdamW(params, groups, (0.9, 0.95)))
    x, n, lr = ms.Tensor(images), ms.Tensor(noise), ms.Tensor(np.float32(1e-4))
    return timed(lambda: step_fn(x, n, lr).asnumpy(), steps)


def main():
    from maeconv.models import get_config
    from maeconv.parity.twins import parity_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mae_vit_base_patch16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    config = get_config(args.preset, norm_pix_loss=True)
    images, noise = parity_inputs(config, args.batch, seed=0)
    print(f"MAE pretraining step, {args.preset}, batch {args.batch}, {config.img_size}px, fp32, "
          f"{os.cpu_count()} CPU threads, median of {args.steps} steps after the first")
    # torch, MindSpore, torch again: other load on a shared machine shows as a gap between the torch runs
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    torch_first, torch_step, torch_cpu = bench_torch(config, images, noise, args.steps)
    ms_first, ms_step, ms_cpu = bench_mindspore(config, images, noise, args.steps)
    _, torch_again, torch_cpu_again = bench_torch(config, images, noise, args.steps)
    print(f"torch step, before and after the MindSpore run: {torch_step:.2f} s, {torch_again:.2f} s; "
          f"load average after: {os.getloadavg()[0]:.2f}")
    if torch_again < torch_step:
        torch_step, torch_cpu = torch_again, torch_cpu_again
    rows = [("torch twin (eager) + torch.optim.AdamW", torch_first, torch_step, torch_cpu),
            ("MindSpore graph mode + maeconv AdamW", ms_first, ms_step, ms_cpu)]
    print(f"\n{'run':<42} {'first step s':>13} {'step s':>8} {'CPU s':>7} {'samples/s':>10} {'vs torch':>9}")
    for name, first, step, cpu in rows:
        print(f"{name:<42} {first:>13.2f} {step:>8.2f} {cpu:>7.2f} {args.batch / step:>10.2f} "
              f"{torch_step / step:>8.2f}x")
    print(f"\nMindSpore compile (first step minus a step): {ms_first - ms_step:.1f} s")
    print("CPU s: process CPU time per step (all threads); busy-waiting threads count too.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
