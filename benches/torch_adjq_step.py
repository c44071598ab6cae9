#!/usr/bin/env python3
"""PyTorch eager CPU peer of benches/adjq_step.rs: one Adjustable Quantization training step
on EfficientNet-B0 at 224x224, batch 25 — the same quantizer math (DESIGN §3: per-channel
range scale/shift, learned bits b = clip(round(k*b0), 2, 8), straight-through rounds, clips
with no gradient outside or to their bounds) at the same points (every weight per output
channel, every conv input but the stem's per channel, every swish input, every bias per
tensor), the float teacher's forward, the paper metric with the straight-through max, the
loss, and two Adams.

    python3 benches/torch_adjq_step.py --threads 2 [--channels-last] [--compile]
    python3 benches/torch_adjq_step.py --device cuda      # the GPU peer of `-- wgpu`
"""
import argparse, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def rnd(x):
    return x + (torch.round(x) - x).detach()


def clip(x, lo, hi):
    c = torch.minimum(torch.maximum(x.detach(), lo), hi)
    return torch.where(c != x.detach(), c, x)


class AdjQ(nn.Module):
    def __init__(self, c, bits, trainable, axis, dynamic=False):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(c))
        self.shift = nn.Parameter(torch.zeros(c))
        self.k = nn.Parameter(torch.ones(c)) if trainable else None
        self.register_buffer("m", torch.zeros(c))
        self.register_buffer("w", torch.ones(c))
        self.b0, self.axis, self.dynamic = bits, axis, dynamic

    def bits(self):
        if self.k is None:
            return torch.full_like(self.scale, self.b0)
        return clip(rnd(self.k * self.b0), torch.tensor(2.0), torch.tensor(8.0))

    def forward(self, x):
        if self.dynamic:
            lo_, hi_ = x.detach().min().reshape(1), x.detach().max().reshape(1)
            m, w = lo_, hi_ - lo_
        else:
            m, w = self.m, self.w
        a = clip(self.scale, torch.tensor(0.0), torch.tensor(2.0))
        s = clip(self.shift, torch.tensor(-0.6), torch.tensor(1.2))
        lo, width = m + w * s, w * a
        b = self.bits()
        smooth = torch.exp(b * math.log(2.0)) - 1
        levels = smooth + (torch.round(smooth.detach()) - smooth.detach())
        S = levels / (width + 1e-7)
        z = rnd(lo * S)
        shape = [1] * x.dim()
        if S.numel() > 1:
            shape[self.axis] = -1
        S, z, L, inv = S.reshape(shape), z.reshape(shape), levels.detach().reshape(shape), (1 / S).reshape(shape)
        u = rnd(x * S) - z
        return (clip(u, torch.zeros_like(L), L) + z) * inv


def same_pad(x, k, s):
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class QConv(nn.Module):
    def __init__(self, cin, cout, k, s=1, g=1, quant_input=True, swish=False, size=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin // g, k, k) * 0.1)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.k, self.s, self.g, self.cin, self.cout = k, s, g, cin, cout
        self.wq = AdjQ(cout, 8.0, True, 0)
        self.bq = AdjQ(1, 8.0, False, 0, dynamic=True)
        self.iq = AdjQ(cin, 8.0, True, 1) if quant_input else None
        self.sq = AdjQ(cout, 8.0, False, 1) if swish else None
        self.out = math.ceil(size / s)

    def conv(self, x):
        if self.iq is not None:
            x = self.iq(x)
        w, b = self.wq(self.weight), self.bq(self.bias)
        return F.conv2d(same_pad(x, self.k, self.s), w, b, self.s, 0, 1, self.g)

    def act(self, x):
        return F.silu(self.sq(self.conv(x)))


class QB0(nn.Module):
    def __init__(self):
        super().__init__()
        size = 224
        self.stem = QConv(3, 32, 3, 2, quant_input=False, swish=True, size=size)
        size = self.stem.out
        self.blocks = nn.ModuleList()
        for r, k, s, e, i, o in BLOCKS:
            for j in range(r):
                cin, st = (i if j == 0 else o), (s if j == 0 else 1)
                mid, red = cin * e, max(1, int(cin * 0.25))
                blk = nn.Module()
                blk.expand = QConv(cin, mid, 1, swish=True, size=size) if e != 1 else None
                blk.dw = QConv(mid, mid, k, st, mid, swish=True, size=size)
                size = blk.dw.out
                blk.red, blk.exp = QConv(mid, red, 1, swish=True), QConv(red, mid, 1)
                blk.proj = QConv(mid, o, 1, size=size)
                blk.skip = st == 1 and cin == o
                self.blocks.append(blk)
        self.head = QConv(320, 1280, 1, swish=True, size=size)
        self.fc = QConv(1280, 1000, 1)

    def convs(self):
        out = [self.stem]
        for b in self.blocks:
            out += ([b.expand] if b.expand is not None else []) + [b.dw, b.red, b.exp, b.proj]
        return out + [self.head, self.fc]

    def forward(self, x):
        x = self.stem.act(x)
        for b in self.blocks:
            y = b.expand.act(x) if b.expand is not None else x
            y = b.dw.act(y)
            s = y.mean((2, 3), keepdim=True)
            y = y * torch.sigmoid(b.exp.conv(b.red.act(s)))
            y = b.proj.conv(y)
            x = y + x if b.skip else y
        x = self.head.act(x).mean((2, 3), keepdim=True)
        return self.fc.conv(x).flatten(1)

    def metric(self, gamma=0.7, p0=6.9e6, o0=1170e6):
        params = ops = 0
        biases = swish = 0
        for c in self.convs():
            bw = c.wq.bits()
            ba = c.iq.bits() if c.iq is not None else torch.full((c.cin,), 8.0, device=bw.device)
            P = c.weight.numel()
            F_ = P * c.out * c.out
            if c.g > 1:
                val = torch.maximum(bw, ba).mean()
            else:
                val = torch.maximum(bw[:, None], ba[None, :]).mean()
            sur = (1 - gamma) * bw.mean() + gamma * ba.mean()
            sm = sur + (val - sur).detach()
            params = params + P * bw.mean() / 32
            ops = ops + 2 * F_ * sm / 32
            biases += c.cout
            if c.sq is not None:
                swish += c.cout * c.out * c.out
        params = params + biases * 8 / 32
        ops = ops + 3 * swish * 8 / 32
        return params / p0 + ops / o0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the student and the teacher (what a PyTorch user would run; "
                         "the first steps compile for minutes)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import importlib.util, pathlib
    spec = importlib.util.spec_from_file_location("b0", pathlib.Path(__file__).with_name("torch_b0_forward.py"))
    b0 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b0)
    dev = torch.device(a.device)
    teacher = b0.B0().eval().to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = QB0().to(dev)
    x = torch.randn(25, 3, 224, 224, device=dev)
    y = (torch.arange(25) * 37 % 1000).to(dev)
    if a.channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student
        x = x.contiguous(memory_format=torch.channels_last)
    bit_params = [p for n, p in student.named_parameters() if n.endswith(".k")]
    other = [p for n, p in student.named_parameters() if not n.endswith(".k")]
    opt_w, opt_k = torch.optim.Adam(other, lr=3e-6), torch.optim.Adam(bit_params, lr=1e-3)
    if a.compile:
        student, teacher = torch.compile(student), torch.compile(teacher)

    def step():
        with torch.no_grad():
            zf = teacher(x)
        zq = student(x)
        m = student.metric()
        sign = 1.0 if m.item() > 0.18 else -1.0
        loss = 0.01 * torch.sqrt((zq - zf) ** 2 + 1e-5).sum(1).mean() + 7.0 * F.cross_entropy(zq, y) + sign * 85.0 * m
        opt_w.zero_grad(); opt_k.zero_grad()
        loss.backward()
        opt_w.step(); opt_k.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t_first = time.perf_counter()
    step()
    sync()
    if a.compile:
        # A second warm-up: the backward graph compiles on the first backward.
        step()
        sync()
    first = time.perf_counter() - t_first
    iters = 3 if dev.type == "cpu" else 20
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    ms = (time.perf_counter() - t0) * 1000 / iters
    layout = "channels_last" if a.channels_last else "contiguous"
    mode = f"torch.compile, warm-up {first:.0f} s" if a.compile else "eager"
    where = f"cpu, {a.threads} threads" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    print(f"| adjq step, torch {torch.__version__} {mode} ({layout}) | {where} | {ms:.0f} | {25 * 1000 / ms:.1f} |")


if __name__ == "__main__":
    main()
