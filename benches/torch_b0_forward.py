#!/usr/bin/env python3
"""PyTorch eager CPU peer of benches/model_forward.rs: EfficientNet-B0 (same architecture:
TF-same padding, SE, swish, BN eps 1e-3), float, eval mode, 224x224, batch 1 and 16.
With --train, the peer of benches/quant_step.rs's float row instead: forward + backward of
mean(logits) at batch 8 (batch norm in eval mode, an affine map like our folded one),
median of 5 after a warm-up.

    python3 benches/torch_b0_forward.py --threads 2 [--train]
"""
import argparse, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class SameConv(nn.Conv2d):
    """Conv with TensorFlow 'same' padding (asymmetric for stride 2)."""
    def forward(self, x):
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def conv_bn(cin, cout, k, s=1, g=1):
    return nn.Sequential(SameConv(cin, cout, k, s, groups=g, bias=False), nn.BatchNorm2d(cout, eps=1e-3))


class MBConv(nn.Module):
    def __init__(self, k, s, e, cin, cout):
        super().__init__()
        mid = cin * e
        self.expand = conv_bn(cin, mid, 1) if e != 1 else None
        self.dw = conv_bn(mid, mid, k, s, mid)
        r = max(1, int(cin * 0.25))
        self.se_reduce, self.se_expand = nn.Conv2d(mid, r, 1), nn.Conv2d(r, mid, 1)
        self.project = conv_bn(mid, cout, 1)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.expand is not None:
            y = F.silu(self.expand(y))
        y = F.silu(self.dw(y))
        s = y.mean((2, 3), keepdim=True)
        y = y * torch.sigmoid(self.se_expand(F.silu(self.se_reduce(s))))
        y = self.project(y)
        return y + x if self.skip else y


class B0(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2)
        blocks = []
        for r, k, s, e, i, o in BLOCKS:
            for j in range(r):
                blocks.append(MBConv(k, s if j == 0 else 1, e, i if j == 0 else o, o))
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(320, 1280, 1)
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = self.blocks(F.silu(self.stem(x)))
        x = F.silu(self.head(x)).mean((2, 3))
        return self.fc(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="time forward + backward at batch 8")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = B0().eval()
    n = sum(p.numel() for p in m.parameters())
    print(f"torch {torch.__version__}, {a.threads} threads, {n} parameters")
    if a.train:
        x = torch.randn(8, 3, 224, 224)
        m(x).mean().backward()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            m.zero_grad(set_to_none=True)
            m(x).mean().backward()
            times.append((time.perf_counter() - t0) * 1000)
        print(f"| torch eager, forward + backward | 8 | median {sorted(times)[2]:.0f} ms |")
        return
    print("| backend | batch | ms / forward | images/s |\n|---|---|---|---|")
    with torch.inference_mode():
        for batch, iters in [(1, 20), (16, 5)]:
            x = torch.randn(batch, 3, 224, 224)
            for _ in range(2):
                m(x)
            t0 = time.perf_counter()
            for _ in range(iters):
                m(x)
            ms = (time.perf_counter() - t0) * 1000 / iters
            print(f"| torch eager | {batch} | {ms:.1f} | {batch * 1000 / ms:.1f} |")


if __name__ == "__main__":
    main()
