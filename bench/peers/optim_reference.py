#!/usr/bin/env python3
"""optim_reference.py — PyTorch 1.13 reference numbers for tests/test_optim.cpp.

Runs torch.optim.SGD / Adam / AdamW for 5 steps on a [2 x 3] float32 parameter with fixed
gradients, and the lr schedulers StepLR, ExponentialLR, CosineAnnealingLR,
SequentialLR(LinearLR -> CosineAnnealingLR) and ReduceLROnPlateau, then prints the results as
C++ float literals ready to paste into the test.

Every hyperparameter is rounded to float32 before torch sees it, so both sides use the same
values (edgetune's options are floats). Gradients are dyadic numbers (exact in float32).
Usage: /usr/bin/python3 bench/peers/optim_reference.py > /tmp/optim_reference.txt
"""
import math

import numpy as np
import torch

STEPS = 5
P0 = [[0.5, -1.0, 1.5], [2.0, -0.25, 0.75]]
# Gradient of step t: G0 scaled by S[t] elementwise; the sign flips and the large-then-small
# magnitudes make momentum, dampening and AMSGrad's running max all matter.
G0 = [[1.0, -2.0, 0.5], [0.125, 3.0, -0.75]]
S = [1.0, -0.5, 0.25, 2.0, -0.125]
# A second parameter [1 x 3] for the groups / skipped-gradient cases.
Q0 = [[0.25, -0.5, 1.25]]
H0 = [[-0.5, 0.75, 2.0]]


def f32(x):
    return float(np.float32(x))


def grad_at(base, t):
    return torch.tensor(base, dtype=torch.float32) * S[t]


def lit(x):
    """A float32 value as a C++ literal that round-trips exactly."""
    v = np.float32(x)
    s = np.format_float_scientific(v, unique=True, trim="-") if v != 0 else "0.0"
    if "e" not in s and "." not in s:
        s += ".0"
    return s + "f"


def print_matrix(name, t):
    vals = ", ".join(lit(v) for v in t.detach().numpy().reshape(-1))
    print(f"// {name}: {list(t.shape)}")
    print(f"const std::vector<float> {name} = {{{vals}}};")


def run(make_opt, name, groups=False, skip=None):
    p = torch.tensor(P0, dtype=torch.float32, requires_grad=True)
    q = torch.tensor(Q0, dtype=torch.float32, requires_grad=True)
    opt = make_opt(p, q)
    for t in range(STEPS):
        opt.zero_grad(set_to_none=True)
        p.grad = grad_at(G0, t)
        if groups or skip is not None:
            if skip is None or t not in skip:
                q.grad = grad_at(H0, t)
        opt.step()
    print_matrix(name + "_p", p)
    if groups or skip is not None:
        print_matrix(name + "_q", q)


def optimizers():
    lr = f32(0.1)
    b = (f32(0.9), f32(0.999))
    eps = f32(1e-8)
    cases = {
        "sgd_plain": lambda p, q: torch.optim.SGD([p], lr=lr),
        "sgd_momentum": lambda p, q: torch.optim.SGD([p], lr=lr, momentum=f32(0.9)),
        "sgd_nesterov": lambda p, q: torch.optim.SGD([p], lr=lr, momentum=f32(0.9), nesterov=True),
        "sgd_dampening": lambda p, q: torch.optim.SGD([p], lr=lr, momentum=f32(0.9),
                                                      dampening=f32(0.5)),
        "sgd_weight_decay": lambda p, q: torch.optim.SGD([p], lr=lr, momentum=f32(0.9),
                                                         weight_decay=f32(0.05)),
        "adam": lambda p, q: torch.optim.Adam([p], lr=lr, betas=b, eps=eps),
        "adam_betas": lambda p, q: torch.optim.Adam([p], lr=f32(0.05), betas=(f32(0.8), f32(0.99)),
                                                    eps=f32(1e-3)),
        "adam_weight_decay": lambda p, q: torch.optim.Adam([p], lr=lr, betas=b, eps=eps,
                                                           weight_decay=f32(0.1)),
        # beta2 = 0.9 lets the second moment shrink after the large early gradients, so the
        # AMSGrad running max differs from plain Adam.
        "adam_amsgrad": lambda p, q: torch.optim.Adam([p], lr=lr, betas=(f32(0.9), f32(0.9)),
                                                      eps=eps, amsgrad=True),
        "adamw": lambda p, q: torch.optim.AdamW([p], lr=lr, betas=b, eps=eps,
                                                weight_decay=f32(0.1)),
        "adamw_amsgrad": lambda p, q: torch.optim.AdamW([p], lr=lr, betas=(f32(0.9), f32(0.9)),
                                                        eps=eps,
                                                        weight_decay=f32(0.1), amsgrad=True),
    }
    for name, make in cases.items():
        run(make, name)
    # Parameter groups: group 1 has its own lr and weight decay.
    run(lambda p, q: torch.optim.SGD(
        [{"params": [p]}, {"params": [q], "lr": f32(0.01), "weight_decay": f32(0.1)}],
        lr=lr, momentum=f32(0.9)), "sgd_groups", groups=True)
    run(lambda p, q: torch.optim.AdamW(
        [{"params": [p]}, {"params": [q], "lr": f32(0.01), "weight_decay": f32(0.5)}],
        lr=lr, betas=b, eps=eps, weight_decay=f32(0.1)), "adamw_groups", groups=True)
    # q has no gradient at steps 0 and 2: skipped, and its own step count drives bias correction.
    run(lambda p, q: torch.optim.Adam([p, q], lr=lr, betas=b, eps=eps), "adam_skip", skip={0, 2})
    run(lambda p, q: torch.optim.SGD([p, q], lr=lr, momentum=f32(0.9)), "sgd_skip", skip={0, 2})


def schedule_lrs(make_sched, n, metrics=None):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=f32(0.1))
    sched = make_sched(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for t in range(n):
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(f32(metrics[t]))
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.899, 0.92, 0.93, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6,
                   0.6, 0.6, 0.6, 0.6, 0.6, 0.6]


def schedules():
    n = 16
    cases = {
        "step_lr": (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=f32(0.5)), None),
        "exponential_lr": (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=f32(0.9)),
                           None),
        "cosine_lr": (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=10, eta_min=f32(0.001)), None),
        "warmup_cosine_lr": (lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=f32(0.1), total_iters=4),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8, eta_min=f32(0.001))],
            milestones=[4]), None),
        "warmup_step_lr": (lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=f32(0.25), total_iters=3),
            torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=f32(0.5))],
            milestones=[3]), None),
        "plateau_lr": (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, factor=f32(0.5), patience=2, threshold=f32(0.01), cooldown=1,
            min_lr=f32(0.02)), PLATEAU_METRICS),
    }
    for name, (make, metrics) in cases.items():
        steps = len(metrics) if metrics else n
        lrs = schedule_lrs(make, steps, metrics)
        print(f"// {name}: lr after 0..{steps} scheduler steps (base lr 0.1)")
        print(f"const std::vector<double> {name} = {{{', '.join(repr(v) for v in lrs)}}};")
    print(f"// plateau metrics fed to step(metric)")
    print(f"const std::vector<float> plateau_metrics = {{{', '.join(lit(m) for m in PLATEAU_METRICS)}}};")


if __name__ == "__main__":
    torch.manual_seed(0)
    print(f"// Generated by bench/peers/optim_reference.py with torch {torch.__version__}")
    optimizers()
    schedules()
