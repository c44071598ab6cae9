//! Decoding JPEG and PNG bytes to 8-bit RGB (zune-jpeg / zune-png; zune-jpeg was the
//! fastest pure-Rust JPEG decoder we measured, see benches/README.md).

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;
use zune_png::PngDecoder;

use super::error::BadRecord;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// Largest side we accept; protects against decompression bombs.
const MAX_SIDE: usize = 1 << 14;

fn options() -> DecoderOptions {
    // Strict: a truncated or corrupt stream is an error, not a grey-filled image.
    DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .png_set_strip_to_8bit(true)
}

/// Decodes a JPEG or PNG (by magic bytes) into `out`, reusing its buffer.
pub fn decode_into(bytes: &[u8], out: &mut Image) -> Result<(), BadRecord> {
    if bytes.starts_with(&[0xff, 0xd8]) {
        decode_jpeg(bytes, out)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, out)
    } else {
        Err(BadRecord::Image(
            "neither JPEG nor PNG (unknown magic bytes)".into(),
        ))
    }
}

/// Decodes a JPEG or PNG into a new image.
pub fn decode(bytes: &[u8]) -> Result<Image, BadRecord> {
    let mut img = Image::default();
    decode_into(bytes, &mut img)?;
    Ok(img)
}

fn decode_jpeg(bytes: &[u8], out: &mut Image) -> Result<(), BadRecord> {
    let err = |e: zune_jpeg::errors::DecodeErrors| BadRecord::Image(format!("JPEG: {e:?}"));
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), options());
    dec.decode_headers().map_err(err)?;
    let info = dec
        .info()
        .ok_or_else(|| BadRecord::Image("JPEG: no header".into()))?;
    let size = dec
        .output_buffer_size()
        .ok_or_else(|| BadRecord::Image("JPEG: no header".into()))?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    if size != w * h * 3 || w == 0 || h == 0 {
        return Err(BadRecord::Image(format!(
            "JPEG: unexpected output size {size} for {w}x{h}"
        )));
    }
    out.rgb.resize(size, 0);
    dec.decode_into(&mut out.rgb).map_err(err)?;
    out.width = w;
    out.height = h;
    Ok(())
}

fn decode_png(bytes: &[u8], out: &mut Image) -> Result<(), BadRecord> {
    let err = |e: zune_png::error::PngDecodeErrors| BadRecord::Image(format!("PNG: {e:?}"));
    let mut dec = PngDecoder::new_with_options(ZCursor::new(bytes), options());
    let raw = dec.decode_raw().map_err(err)?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| BadRecord::Image("PNG: no header".into()))?;
    let cs = dec
        .colorspace()
        .ok_or_else(|| BadRecord::Image("PNG: no header".into()))?;
    let n = cs.num_components();
    if w == 0 || h == 0 || raw.len() != w * h * n {
        return Err(BadRecord::Image(format!(
            "PNG: {} bytes for {w}x{h} {cs:?}",
            raw.len()
        )));
    }
    out.rgb.clear();
    out.rgb.reserve(w * h * 3);
    match cs {
        ColorSpace::RGB => out.rgb.extend_from_slice(&raw),
        // Alpha is dropped, as tf.io.decode_png(channels=3) does.
        ColorSpace::RGBA => raw
            .chunks_exact(4)
            .for_each(|p| out.rgb.extend_from_slice(&p[..3])),
        ColorSpace::Luma => raw.iter().for_each(|&g| out.rgb.extend([g, g, g])),
        ColorSpace::LumaA => raw.chunks_exact(2).for_each(|p| out.rgb.extend([p[0]; 3])),
        other => {
            return Err(BadRecord::Image(format!(
                "PNG: unsupported colour space {other:?}"
            )));
        }
    }
    out.width = w;
    out.height = h;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"").is_err());
        assert!(decode(b"GIF89a").is_err());
        assert!(decode(&[0xff, 0xd8, 0xff, 0xe0, 0, 0]).is_err());
        assert!(decode(b"\x89PNG\r\n\x1a\n\0\0").is_err());
    }
}
