#!/usr/bin/env python3
"""Reference MicroNet counts for EfficientNet, from the challenge's own counting.py.

Builds the op list the way google-research's EfficientNetCounting.ipynb reads it from the
TF model (stem, MBConv blocks with folded-BN biases, SE, skip adds, head, pool, fc), but
from the block table directly, so no TensorFlow is needed. Each op goes through the
official `counting.count_ops`. `src/score/counter.rs` asserts these totals in its tests.

counting.py is not part of this repository; fetch it from
https://github.com/google-research/google-research/blob/master/micronet_challenge/counting.py
and pass its directory:

    python3 benches/micronet_reference.py --counting-dir /tmp/micronet --model b0
    python3 benches/micronet_reference.py --counting-dir /tmp/micronet --model b0 --notebook-skip-slip
    python3 benches/micronet_reference.py --counting-dir /tmp/micronet --model b0 --bits 16
"""

import argparse
import json
import math
import sys

# (repeats, kernel, stride, expand_ratio, input_filters, output_filters), the B0 table of
# tensorflow/tpu efficientnet_builder.py; se_ratio 0.25 where SE is on.
B0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

MODELS = {
    # name: (width, depth, se, activation as counting.py names it, fixed stem/head)
    "b0": (1.0, 1.0, True, "swish", False),
    # Lite0's relu6 has no entry of its own in counting.py; the notebook offers 'relu'.
    "lite0": (1.0, 1.0, False, "relu", True),
    "small": (0.5, 0.5, True, "swish", False),
}


def round_filters(filters, width):
    if width == 1.0:
        return filters
    divisor = 8
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def expanded_blocks(width, depth, fixed):
    out = []
    last = len(B0_BLOCKS) - 1
    for i, (r, k, s, e, cin, cout) in enumerate(B0_BLOCKS):
        reps = r if fixed and i in (0, last) else int(math.ceil(depth * r))
        cin, cout = round_filters(cin, width), round_filters(cout, width)
        for j in range(reps):
            out.append((k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
    return out


def build_ops(c, model, resolution, slip, classes):
    width, depth, se, act, fixed = MODELS[model]
    ops = []
    stem = 32 if fixed else round_filters(32, width)
    head = 1280 if fixed else round_filters(1280, width)
    size = resolution
    ops.append(("stem", c.Conv2D(size, [3, 3, 3, stem], [2, 2], "same", True, act)))
    size = c.get_conv_output_size(size, 3, "same", 2)
    for n, (k, s, e, cin, cout) in enumerate(expanded_blocks(width, depth, fixed)):
        p = "blocks.%d." % n
        mid = cin * e
        if e != 1:
            ops.append((p + "expand", c.Conv2D(size, [1, 1, cin, mid], [1, 1], "same", True, act)))
        ops.append((p + "depthwise", c.DepthWiseConv2D(size, [k, k, mid, 1], [s, s], "same", True, act)))
        size = c.get_conv_output_size(size, k, "same", s)
        if se:
            red = max(1, int(cin * 0.25))
            ops.append((p + "se.pool", c.GlobalAvg(size, mid)))
            ops.append((p + "se.reduce", c.Conv2D(1, [1, 1, mid, red], [1, 1], "same", True, act)))
            ops.append((p + "se.expand", c.Conv2D(1, [1, 1, red, mid], [1, 1], "same", True, "sigmoid")))
            ops.append((p + "se.scale", c.Scale(size, mid)))
        ops.append((p + "project", c.Conv2D(size, [1, 1, mid, cout], [1, 1], "same", True, None)))
        if s == 1 and cin == cout:
            # The notebook passes the SE width (the expanded one) here.
            ops.append((p + "skip", c.Add(size, mid if slip else cout)))
    last = expanded_blocks(width, depth, fixed)[-1][4]
    ops.append(("head", c.Conv2D(size, [1, 1, last, head], [1, 1], "same", True, act)))
    ops.append(("pool", c.GlobalAvg(size, head)))
    ops.append(("classifier", c.FullyConnected([head, classes], True, None)))
    return ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counting-dir", required=True, help="directory holding counting.py")
    ap.add_argument("--model", choices=sorted(MODELS), default="b0")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--notebook-skip-slip", action="store_true")
    ap.add_argument("--bits", type=int, default=32, help="parameter and multiply bits")
    ap.add_argument("--sparsity", type=float, default=0.0)
    ap.add_argument("--per-layer", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, a.counting_dir)
    import counting  # noqa: E402

    ops = build_ops(counting, a.model, a.resolution, a.notebook_skip_slip, a.classes)
    params = mults = adds = param_bits = 0
    for name, op in ops:
        p, m, d = counting.count_ops(op, a.sparsity, 1)
        pb, _, _ = counting.count_ops(op, a.sparsity, a.bits)
        if a.per_layer:
            print("%-22s %12s %14s %14s" % (name, p, m, d))
        params, mults, adds, param_bits = params + p, mults + m, adds + d, param_bits + pb
    # Costs as MicroNetCounter.print_summary weights them: parameters by their bits,
    # multiplies by the input bits, additions at the 32-bit accumulator.
    params_cost = param_bits / 32
    mults_cost = mults * a.bits / 32
    adds_cost = adds
    print(json.dumps({
        "model": a.model, "resolution": a.resolution, "bits": a.bits,
        "notebook_skip_slip": a.notebook_skip_slip, "sparsity": a.sparsity,
        "params": float(params), "mults": float(mults), "adds": float(adds),
        "params_cost": float(params_cost), "mults_cost": float(mults_cost),
        "adds_cost": float(adds_cost),
        "score": float(params_cost / 6.9e6 + (mults_cost + adds_cost) / 1170e6),
    }, indent=1))


if __name__ == "__main__":
    main()
