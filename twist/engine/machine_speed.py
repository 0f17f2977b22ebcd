"""How fast this machine trains a plain network: the figure printed beside a run's own time, so that a
reader can tell a slow machine from a slow recipe (the 2-core machines this project runs on differ by
up to 4.5x)."""
from __future__ import annotations

import time

# The digits demo's step: two 24 px views of a batch of 256 through one backbone call.
DEMO_SETTING = {"batch": 512, "size": 24}
DEMO_SETTING_TEXT = f"{DEMO_SETTING['size']} px, batch {DEMO_SETTING['batch']}: the demo's step"


def bare_resnet18_rate(steps: int, batch: int, size: int) -> float:
    """Training images per second of a bare torchvision ResNet-18 (cross-entropy, SGD) on random
    ``batch`` x 3 x ``size`` x ``size`` tensors, after one warm-up step: the fastest of ``steps``
    timed steps, as timeit reports, since another job on the machine only ever slows a step."""
    import torch
    import torchvision

    net = torchvision.models.resnet18(num_classes=11)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 11, (batch,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()

    step()
    fastest = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - start)
    return batch / fastest
