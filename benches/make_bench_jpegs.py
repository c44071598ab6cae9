"""Writes ImageNet-like JPEGs for benches/data_pipeline.rs and tf_data_pipeline.py.

Smooth random colour fields with blobs, edges and fine noise texture, mostly 500x375
(some 375x500 and other sizes), JPEG quality 90, into OUT/c<k>/img_<i>.jpg.

    python3 benches/make_bench_jpegs.py [OUT=/tmp/bench_jpegs] [N=300]
"""
import os
import sys

import numpy as np
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench_jpegs"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
SIZES = [(500, 375)] * 6 + [(375, 500), (500, 333), (640, 480), (400, 300)]


def photo(rng, w, h):
    # Low-frequency colour field: bilinear upsampling of a coarse random grid.
    gh, gw = rng.integers(3, 8, size=2)
    grid = rng.uniform(0, 255, size=(gh, gw, 3))
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0 = np.floor(ys).astype(int).clip(0, gh - 2)
    x0 = np.floor(xs).astype(int).clip(0, gw - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    img = (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx)
    # Objects with sharp edges.
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(3, 9)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(20, min(w, h) / 2.5)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = img[mask] * 0.4 + rng.uniform(0, 255, size=3) * 0.6
    # Texture: striped pattern plus per-pixel noise.
    freq = rng.uniform(0.05, 0.4)
    img += 12 * np.sin(freq * xx + 0.7 * freq * yy)[:, :, None]
    img += rng.normal(0, 10, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def main():
    rng = np.random.default_rng(0)
    total = 0
    for i in range(N):
        w, h = SIZES[i % len(SIZES)]
        d = os.path.join(OUT, "c%d" % (i % 10))
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "img_%04d.jpg" % i)
        Image.fromarray(photo(rng, w, h)).save(path, quality=90)
        total += os.path.getsize(path)
    print("%d JPEGs in %s, mean %.0f bytes" % (N, OUT, total / N))


if __name__ == "__main__":
    main()
