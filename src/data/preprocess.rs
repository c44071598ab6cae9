//! Crop, resize, flip and normalize one decoded image into a CHW f32 slice.
//!
//! Training: random resized crop (torchvision's algorithm: area 0.08..1, log-uniform
//! aspect 3/4..4/3, 10 attempts, then a centre crop) and a random horizontal flip.
//! Evaluation: EfficientNet's centre crop of `s/(s+32)·min(h,w)` and a resize to `s`, or
//! the Adjustable Quantization original's (`data.py:238-266`): TF's
//! `central_crop(0.875)` of each side and TF1's `resize_bilinear` to s×s.
//! Resizing uses half-pixel centres and no antialiasing, like `tf.image.resize`, except
//! TF1's legacy bilinear ([`Resize::BilinearTf1`]).

use serde::{Deserialize, Serialize};

use super::image::Image;
use super::rng::Rng;

/// Interpolation kernel of the resize.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    Bilinear,
    /// TF1's `resize_bilinear(align_corners=False)`: source = destination·(in/out), no
    /// half-pixel centres (what the original's eval transform ran).
    BilinearTf1,
    /// Keys cubic with a = -0.5, as TensorFlow's bicubic resize.
    #[default]
    Bicubic,
}

/// The evaluation crop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalCrop {
    /// EfficientNet's centred square of side `s/(s+p)·min(h,w)` (`crop_padding` p).
    #[default]
    Padded,
    /// TF's `central_crop(fraction)`: each side keeps `fraction` (offset ⌊side·(1 −
    /// fraction)/2⌋ on each end), the aspect ratio of the image (the original: 0.875).
    Central(f64),
}

/// Per-channel normalization presets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// EfficientNet-B*: ImageNet mean (0.485, 0.456, 0.406)·255, std (0.229, 0.224, 0.225)·255.
    #[default]
    B0,
    /// EfficientNet-Lite: (x − 127) / 128.
    Lite,
}

impl Normalization {
    /// (mean, std) per RGB channel, on the 0..255 scale.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Normalization::B0 => (
                [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
                [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
            ),
            Normalization::Lite => ([127.0; 3], [128.0; 3]),
        }
    }
}

/// What to do with each image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preprocess {
    /// Output side length `s` (square).
    pub size: usize,
    /// Random crop and flip when true; centre crop when false.
    pub train: bool,
    pub resize: Resize,
    pub normalization: Normalization,
    /// Eval crop padding p: the centre crop keeps s/(s+p) of the shorter side (32).
    pub crop_padding: f32,
    /// Which centre crop evaluation (and training without augmentation) takes.
    pub eval_crop: EvalCrop,
    /// Smallest area fraction of a training crop (0.08).
    pub min_crop_area: f64,
    /// Random horizontal flips in training (true).
    pub flip: bool,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            size: 224,
            train: false,
            resize: Resize::Bicubic,
            normalization: Normalization::B0,
            crop_padding: 32.0,
            eval_crop: EvalCrop::Padded,
            min_crop_area: 0.08,
            flip: true,
        }
    }
}

/// A rectangle of the source image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// torchvision's `RandomResizedCrop.get_params` with scale (min_area, 1) (torchvision and
/// EfficientNet: 0.08), ratio (3/4, 4/3).
pub fn random_resized_crop(width: usize, height: usize, min_area: f64, rng: &mut Rng) -> Crop {
    let (min_ratio, max_ratio) = (3.0f64 / 4.0, 4.0f64 / 3.0);
    let area = (width * height) as f64;
    for _ in 0..10 {
        let target = area * rng.range(min_area, 1.0);
        let ratio = rng.range(min_ratio.ln(), max_ratio.ln()).exp();
        let w = (target * ratio).sqrt().round() as usize;
        let h = (target / ratio).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let y = rng.below(height - h + 1);
            let x = rng.below(width - w + 1);
            return Crop { x, y, w, h };
        }
    }
    // Fallback: the whole image, trimmed to the allowed aspect range.
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < min_ratio {
        (
            width,
            ((width as f64 / min_ratio).round() as usize).clamp(1, height),
        )
    } else if in_ratio > max_ratio {
        (
            ((height as f64 * max_ratio).round() as usize).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    Crop {
        x: (width - w) / 2,
        y: (height - h) / 2,
        w,
        h,
    }
}

/// EfficientNet's eval crop: a centred square of side `s/(s+p)·min(h,w)` with crop padding
/// p = 32 (p = 0 keeps the whole shorter side, for small images such as the digits).
pub fn center_crop(width: usize, height: usize, size: usize, crop_padding: f32) -> Crop {
    let side = (size as f32 / (size as f32 + crop_padding) * width.min(height) as f32) as usize;
    let side = side.max(1);
    Crop {
        x: (width - side).div_ceil(2),
        y: (height - side).div_ceil(2),
        w: side,
        h: side,
    }
}

/// TF's `tf.image.central_crop` of a `width`×`height` image (`image_ops_impl.py`).
pub fn central_crop(width: usize, height: usize, fraction: f64) -> Crop {
    let start = |side: usize| ((side as f64 - side as f64 * fraction) / 2.0) as usize;
    let (x, y) = (start(width), start(height));
    Crop {
        x,
        y,
        w: (width - 2 * x).max(1),
        h: (height - 2 * y).max(1),
    }
}

impl Preprocess {
    /// Number of f32 values one image occupies in a batch.
    pub fn image_len(&self) -> usize {
        3 * self.size * self.size
    }

    /// Writes the preprocessed image into `out` (CHW, `image_len()` values). `rng` is
    /// only drawn from in training mode.
    pub fn apply(&self, img: &Image, rng: &mut Rng, out: &mut [f32]) {
        let (crop, flip) = if self.train {
            let crop = random_resized_crop(img.width, img.height, self.min_crop_area, rng);
            // The coin is drawn either way, so the crops do not depend on `flip`.
            (crop, rng.uniform() < 0.5 && self.flip)
        } else {
            let crop = match self.eval_crop {
                EvalCrop::Padded => {
                    center_crop(img.width, img.height, self.size, self.crop_padding)
                }
                EvalCrop::Central(f) => central_crop(img.width, img.height, f),
            };
            (crop, false)
        };
        resample(
            img,
            crop,
            self.size,
            flip,
            self.resize,
            self.normalization,
            out,
        );
    }
}

/// Filter taps of one axis: output `o` reads `k` source samples from `start[o]`.
struct Axis {
    k: usize,
    start: Vec<usize>,
    weights: Vec<f32>,
}

fn kernel(resize: Resize, x: f32) -> f32 {
    let x = x.abs();
    match resize {
        Resize::Bilinear | Resize::BilinearTf1 => (1.0 - x).max(0.0),
        Resize::Bicubic => {
            const A: f32 = -0.5;
            if x <= 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
            } else {
                0.0
            }
        }
    }
}

/// Taps mapping `src_len` samples onto `out_len`; out-of-range taps fold onto the edge
/// sample (clamping), so every window lies inside the source.
fn axis(src_len: usize, out_len: usize, resize: Resize, flip: bool) -> Axis {
    let taps = match resize {
        Resize::Bilinear | Resize::BilinearTf1 => 2,
        Resize::Bicubic => 4,
    };
    let k = taps.min(src_len);
    let scale = src_len as f32 / out_len as f32;
    let mut start = Vec::with_capacity(out_len);
    let mut weights = vec![0.0f32; out_len * k];
    for o in 0..out_len {
        let src_o = if flip { out_len - 1 - o } else { o };
        let center = match resize {
            Resize::BilinearTf1 => src_o as f32 * scale,
            _ => (src_o as f32 + 0.5) * scale - 0.5,
        };
        let first = center.floor() as isize - (taps as isize / 2 - 1);
        let s = first.clamp(0, (src_len - k) as isize) as usize;
        let w = &mut weights[o * k..(o + 1) * k];
        for t in 0..taps as isize {
            let i = first + t;
            let clamped = i.clamp(0, src_len as isize - 1) as usize;
            w[clamped - s] += kernel(resize, center - i as f32);
        }
        start.push(s);
    }
    Axis { k, start, weights }
}

/// Resizes `crop` of `img` to `size`×`size`, optionally mirrored, normalized into CHW.
fn resample(
    img: &Image,
    crop: Crop,
    size: usize,
    flip: bool,
    resize: Resize,
    norm: Normalization,
    out: &mut [f32],
) {
    let (mean, std) = norm.mean_std();
    let inv_std = std.map(|s| 1.0 / s);
    let ys = axis(crop.h, size, resize, false);
    let xs = axis(crop.w, size, resize, flip);
    let stride = img.width * 3;
    let plane = size * size;
    let mut row = vec![0.0f32; crop.w * 3];
    for oy in 0..size {
        // Vertical pass over the crop's width: a dense, vectorizable weighted row sum.
        let wy = &ys.weights[oy * ys.k..(oy + 1) * ys.k];
        for (t, &w) in wy.iter().enumerate() {
            let sy = crop.y + ys.start[oy] + t;
            let src = &img.rgb[sy * stride + crop.x * 3..sy * stride + (crop.x + crop.w) * 3];
            if t == 0 {
                row.iter_mut()
                    .zip(src)
                    .for_each(|(a, &p)| *a = w * f32::from(p));
            } else {
                row.iter_mut()
                    .zip(src)
                    .for_each(|(a, &p)| *a += w * f32::from(p));
            }
        }
        // Horizontal pass, writing each channel to its plane.
        for ox in 0..size {
            let wx = &xs.weights[ox * xs.k..(ox + 1) * xs.k];
            let base = xs.start[ox] * 3;
            let mut acc = [0.0f32; 3];
            for (t, &w) in wx.iter().enumerate() {
                let px = &row[base + t * 3..base + t * 3 + 3];
                acc[0] += w * px[0];
                acc[1] += w * px[1];
                acc[2] += w * px[2];
            }
            let at = oy * size + ox;
            for c in 0..3 {
                out[c * plane + at] = (acc[c] - mean[c]) * inv_std[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rng::Purpose;

    fn gradient(w: usize, h: usize) -> Image {
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                rgb.extend([(x * 255 / w) as u8, (y * 255 / h) as u8, 100]);
            }
        }
        Image {
            width: w,
            height: h,
            rgb,
        }
    }

    /// The original's eval transform run by real TensorFlow
    /// (`tests/fixtures/tf/eval_preprocess.json`): TF's `central_crop(0.875)` boxes
    /// exactly, and the TF1-bilinear-resized, normalized images to float32 rounding (TF
    /// lerps on [0, 1] values, we weight 0..255 samples; both in f32).
    #[test]
    fn original_eval_transform_matches_tensorflow() {
        let text = std::fs::read_to_string("tests/fixtures/tf/eval_preprocess.json").unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let n = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
        for case in doc["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let (h, w) = (n(&case["input_shape"][0]), n(&case["input_shape"][1]));
            let img = Image {
                width: w,
                height: h,
                rgb: case["input_uint8"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u8)
                    .collect(),
            };
            let c = &case["crop"];
            let expected = Crop {
                x: n(&c["offset_w"]),
                y: n(&c["offset_h"]),
                w: n(&c["crop_w"]),
                h: n(&c["crop_h"]),
            };
            assert_eq!(central_crop(w, h, 0.875), expected, "{name}");
            let size = n(&case["out_height"]);
            assert_eq!(size, n(&case["out_width"]));
            let pre = Preprocess {
                size,
                resize: Resize::BilinearTf1,
                eval_crop: EvalCrop::Central(0.875),
                ..Preprocess::default()
            };
            let mut out = vec![0.0; pre.image_len()];
            pre.apply(&img, &mut Rng::keyed(0, Purpose::Augment, 0, 0), &mut out);
            let want: Vec<f32> = case["output"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let plane = size * size;
            let mut worst = 0f32;
            for (i, &t) in want.iter().enumerate() {
                // TF's HWC against our CHW.
                let (pixel, ch) = (i / 3, i % 3);
                worst = worst.max((out[ch * plane + pixel] - t).abs());
            }
            assert!(
                worst < 2e-5,
                "{name}: differs from TensorFlow by up to {worst}"
            );
        }
    }

    #[test]
    fn weights_sum_to_one() {
        for resize in [Resize::Bilinear, Resize::BilinearTf1, Resize::Bicubic] {
            for (src, out) in [(1, 5), (2, 7), (500, 224), (37, 224), (224, 224)] {
                let a = axis(src, out, resize, false);
                for o in 0..out {
                    let s: f32 = a.weights[o * a.k..(o + 1) * a.k].iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{resize:?} {src}->{out}: {s}");
                    assert!(a.start[o] + a.k <= src);
                }
            }
        }
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let img = gradient(16, 16);
        let p = Preprocess {
            size: 16,
            normalization: Normalization::Lite,
            ..Default::default()
        };
        let mut out = vec![0.0; p.image_len()];
        let crop = Crop {
            x: 0,
            y: 0,
            w: 16,
            h: 16,
        };
        resample(
            &img,
            crop,
            16,
            false,
            Resize::Bicubic,
            Normalization::Lite,
            &mut out,
        );
        for y in 0..16 {
            for x in 0..16 {
                let want = (f32::from(img.rgb[(y * 16 + x) * 3]) - 127.0) / 128.0;
                assert!((out[y * 16 + x] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn flip_mirrors() {
        let img = gradient(40, 30);
        let crop = Crop {
            x: 3,
            y: 2,
            w: 30,
            h: 20,
        };
        let (mut a, mut b) = (vec![0.0; 3 * 64], vec![0.0; 3 * 64]);
        resample(
            &img,
            crop,
            8,
            false,
            Resize::Bilinear,
            Normalization::B0,
            &mut a,
        );
        resample(
            &img,
            crop,
            8,
            true,
            Resize::Bilinear,
            Normalization::B0,
            &mut b,
        );
        for c in 0..3 {
            for y in 0..8 {
                for x in 0..8 {
                    assert_eq!(a[c * 64 + y * 8 + x], b[c * 64 + y * 8 + 7 - x]);
                }
            }
        }
    }

    #[test]
    fn crops_stay_inside() {
        let mut rng = Rng::keyed(3, Purpose::Augment, 0, 0);
        for (w, h) in [(1, 1), (500, 375), (10, 300), (300, 10), (32, 32)] {
            for _ in 0..200 {
                let c = random_resized_crop(w, h, 0.08, &mut rng);
                assert!(
                    c.w > 0 && c.h > 0 && c.x + c.w <= w && c.y + c.h <= h,
                    "{c:?}"
                );
            }
            let c = center_crop(w, h, 224, 32.0);
            assert!(c.w > 0 && c.x + c.w <= w && c.y + c.h <= h, "{c:?}");
        }
        // EfficientNet: 224/(224+32)·375 = 328.125 -> 328, offsets rounded up.
        assert_eq!(
            center_crop(500, 375, 224, 32.0),
            Crop {
                x: 86,
                y: 24,
                w: 328,
                h: 328
            }
        );
    }
}
