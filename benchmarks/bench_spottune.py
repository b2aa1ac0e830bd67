"""One SpotTUnet training step against one fine-tune-all step of the same U-Net, batch and crop (issue 8: <= 2.3x).

Both steps are complete SGD steps (momentum 0.9, Nesterov) as the training loop makes them: zero_grad, forward
in train mode, BCE-with-logits (+ the policy penalty for SpotTUnet), backward, optimizer step. SpotTUnet's step
holds the two copies, the policy network, Gumbel straight-through sampling and one SGD with the two parameter
groups. A third row times the policy network's forward + backward alone (a breakdown, not a contender).
Contenders alternate within each round (never concurrently); the table gives the median seconds per step and the
median of the per-round ratios, both in wall time and in process CPU time (on a shared CPU machine with one torch
thread, CPU time is the figure that other jobs disturb least; on a GPU only wall time, after a synchronize, counts).

    python benchmarks/bench_spottune.py                      # dsa, batch 16, 256 x 256, 1 thread, 3 rounds
    python benchmarks/bench_spottune.py --size 128 --rounds 5
    python benchmarks/bench_spottune.py --device cuda --threads 16 --rounds 20
    python benchmarks/bench_spottune.py --flops-only                 # the FLOP ratio (the prediction), ~1 min
    python benchmarks/bench_spottune.py --mix-only                   # one mixing site, 3 implementations

--flops-only counts the convolution / matmul FLOPs of one step per contender (torch.utils.flop_counter): the
compute ratio that the timed ratio should approach when convolutions dominate.
"""
import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from fewshot_da.cpu_memory import keep_freed_memory
from fewshot_da.models import build_model
from fewshot_da.models.spottune import SpotTUnet, mix, param_groups, policy_penalty
from fewshot_da.training.fit import training_layout


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_steps(arch, batch, size, device, layout=torch.contiguous_format):
    """{name: zero-argument callable doing one training step}, all on the same fixed batch, weights and batch in
    memory layout `layout` (the training loop's: `training_layout(device)`)."""
    torch.manual_seed(0)
    source = build_model(arch).to(device)
    x = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=layout)
    y = (x > 0).float()

    finetune = build_model(arch).to(device)
    finetune.load_state_dict(source.state_dict())
    finetune.to(memory_format=layout).train()
    opt_ft = torch.optim.SGD(finetune.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    spot = SpotTUnet(arch, source.state_dict()).to(device, memory_format=layout)
    spot.train()
    opt_spot = torch.optim.SGD(param_groups(spot), momentum=0.9, nesterov=True)

    policy = spot.policy
    opt_policy = torch.optim.SGD(policy.parameters(), lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)

    def step_finetune():
        opt_ft.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(finetune(x), y).backward()
        opt_ft.step()

    def step_spottune():
        opt_spot.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(spot(x), y) + policy_penalty(spot.last_policy, 0.005)
        loss.backward()
        opt_spot.step()

    def step_policy_only():
        opt_policy.zero_grad(set_to_none=True)
        policy(x).square().mean().backward()
        opt_policy.step()

    return {"fine-tune all": step_finetune, "SpotTUnet": step_spottune, "policy net alone": step_policy_only}


def print_flops(steps, args):
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for name, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step()
        flops[name] = counter.get_total_flops()
    print(f"# {args.arch}, batch {args.batch}, {args.size}x{args.size}: FLOPs of one training step "
          "(forward + backward, convolutions and matmuls)")
    print("| step | GFLOP/step | x fine-tune all |")
    print("|---|---:|---:|")
    for name, n in flops.items():
        print(f"| {name} | {n / 1e9:.1f} | {n / flops['fine-tune all']:.3f} |")


class _MixDot(torch.autograd.Function):
    """The alternative measured (and rejected): lerp forward; backward g(1-p), g p and <g, b> - <g, a> by bmm."""

    @staticmethod
    def forward(ctx, a, b, p):
        ctx.save_for_backward(a, b, p)
        return torch.lerp(a, b, p.view(-1, 1, 1, 1))

    @staticmethod
    def backward(ctx, grad):
        a, b, p = ctx.saved_tensors
        w = p.view(-1, 1, 1, 1)
        g = grad.reshape(grad.shape[0], 1, -1)
        grad_p = torch.bmm(g, b.reshape(g.shape[0], -1, 1)) - torch.bmm(g, a.reshape(g.shape[0], -1, 1))
        return grad * (1 - w), grad * w, grad_p.view_as(p)


def print_mix(args, repeats=40):
    """Forward + backward of one mixing site on a (batch, 16, size, size) unit output (the level-0 width of dsa)."""
    shape = (args.batch, 16, args.size, args.size)
    contenders = {
        "formula a * (1 - p) + b * p": lambda a, b, p: a * (1 - p.view(-1, 1, 1, 1)) + b * p.view(-1, 1, 1, 1),
        "fewshot_da mix = torch.lerp(a, b, p)": mix,
        "lerp forward, hand-written backward (dot products for p)": _MixDot.apply,
    }
    torch.manual_seed(0)
    a, b = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    p, g = torch.rand(args.batch, requires_grad=True), torch.randn(shape)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            c0 = time.process_time()
            fn(a, b, p).backward(g)
            times[name].append(time.process_time() - c0)
    print(f"# one mixing site {shape}, forward + backward, CPU ms (median of {repeats})")
    print("| implementation | CPU ms |")
    print("|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {1e3 * statistics.median(values):.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="dsa")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="square crop side in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs of one step each, no timing")
    parser.add_argument("--mix-only", action="store_true", help="time one mixing site's implementations")
    parser.add_argument("--no-cpu-setup", action="store_true",
                        help="NCHW layout and glibc's default malloc, as before the training loop's CPU setup")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mix_only:
        print_mix(args)
        return
    device = torch.device(args.device)
    layout = torch.contiguous_format if args.no_cpu_setup else training_layout(device)
    heap = "glibc default" if args.no_cpu_setup or device.type != "cpu" else \
        f"keep_freed_memory() {'on' if keep_freed_memory() else 'unavailable'}"
    steps = make_steps(args.arch, args.batch, args.size, device, layout)
    if args.flops_only:
        print_flops(steps, args)
        return
    for step in steps.values():  # warm-up (allocator, kernels)
        step()
    _sync(device)
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"# {args.arch}, batch {args.batch}, {args.size}x{args.size}, {args.device}, {args.threads} thread(s), "
          f"{args.rounds} rounds; layout {layout}, heap: {heap}; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print("| step | wall s/step | x fine-tune all (wall) | CPU s/step | x fine-tune all (CPU) |")
    print("|---|---:|---:|---:|---:|")
    ratio = {}
    for label, times in (("wall", wall), ("cpu", cpu)):
        ratio[label] = {name: statistics.median(a / b for a, b in zip(values, times["fine-tune all"]))
                        for name, values in times.items()}
    for name in steps:
        print(f"| {name} | {statistics.median(wall[name]):.3f} | {ratio['wall'][name]:.2f} | "
              f"{statistics.median(cpu[name]):.3f} | {ratio['cpu'][name]:.2f} |")
    for label, times in (("wall", wall), ("CPU", cpu)):
        per_round = [a / b for a, b in zip(times["SpotTUnet"], times["fine-tune all"])]
        print(f"per-round SpotTUnet / fine-tune-all ({label}): {', '.join(f'{r:.2f}' for r in per_round)}")


if __name__ == "__main__":
    main()
