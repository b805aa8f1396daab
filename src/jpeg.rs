//! JPEG decoding by libjpeg-turbo's decoder, set up the way Pillow's `Image.open(p).convert("RGB")` sets
//! it up, so the pixels are Pillow's bit for bit.
//!
//! The decoder is the one mozjpeg ships (mozjpeg is a libjpeg-turbo fork whose changes are on the encoder
//! side), built from the C sources vendored in `mozjpeg-sys` by its own build script with `cc`: no system
//! libjpeg, no cmake; SIMD off (it would need nasm; the integer IDCT, fancy upsampling and colour
//! conversion give the same bytes with or without it).
//!
//! Pillow (`JpegDecode.c`, `JpegImagePlugin.py`) leaves libjpeg's defaults alone: the accurate integer
//! ("islow") IDCT, fancy (triangle) upsampling of subsampled chroma, block smoothing of progressive scans,
//! the colour space guessed from the JFIF/Adobe markers. It asks for grey (`L`), RGB or CMYK output by the
//! number of components, reads CMYK as Adobe-inverted (`CMYK;I`) and converts it to RGB with its own
//! formula ([`cmyk_to_rgb`]). Warnings about corrupt data are ignored, as Pillow ignores them; data that
//! ends before the end-of-image marker is an error (Pillow's `LOAD_TRUNCATED_IMAGES` is off by default).
//! EXIF orientation is not applied: Pillow (and so timm) does not apply it either.
//!
//! libjpeg reports a fatal error through `error_exit`, which must not return. Here it unwinds (with
//! `resume_unwind`, so no panic message is printed) back to [`decode`], which catches it; the C code is
//! compiled with `-fexceptions` (mozjpeg-sys's `unwinding` feature), so unwinding through its frames is
//! defined, and the decompressor is destroyed afterwards, freeing libjpeg's memory.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use image::RgbImage;
use mozjpeg_sys::*;

/// What [`decode`] learnt from the header, for the caller's size limits.
pub(crate) struct Header {
    pub width: u32,
    pub height: u32,
}

/// The payload `error_exit` unwinds with: the error message, libjpeg's text in it.
struct JpegError(String);

/// Decodes a whole JPEG file to RGB as Pillow does. `check` sees the dimensions from the header before any
/// pixel is decoded (or any buffer for them allocated) and may refuse the image. The error is one line.
pub(crate) fn decode(
    bytes: &[u8],
    check: impl FnOnce(&Header) -> Result<(), String>,
) -> Result<RgbImage, String> {
    let mut err = Box::new(MaybeUninit::<jpeg_error_mgr>::zeroed());
    let mut cinfo = Box::new(MaybeUninit::<jpeg_decompress_struct>::zeroed());
    // SAFETY: both structs are plain C data for which all-zero bytes is a valid value (libjpeg's own
    // examples zero them too); `jpeg_std_error` fills in the error manager before anything reads it.
    let (err, cinfo) = unsafe { (err.assume_init_mut(), cinfo.assume_init_mut()) };
    // SAFETY: `err` outlives `cinfo`'s use of it (both live until the end of this function).
    let err = unsafe { jpeg_std_error(err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    cinfo.common.err = err;
    // SAFETY: `cinfo` is a zeroed struct of the size and version the library was built for; creation
    // fails only by `error_exit` (out of memory), whose unwinding this `catch_unwind` stops.
    let created = catch_unwind(AssertUnwindSafe(|| unsafe {
        jpeg_create_decompress(cinfo)
    }));
    if let Err(payload) = created {
        return Err(message_of(payload));
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `cinfo` was created above; `bytes` outlives the decompressor (destroyed below, before
        // this function returns); every libjpeg error unwinds out of this closure.
        unsafe { decode_created(cinfo, bytes, check) }
    }));
    // SAFETY: `cinfo` was created; destroying it after an error is what libjpeg asks for (it frees the
    // memory pools whatever state the decompressor was left in).
    unsafe { jpeg_destroy_decompress(cinfo) };
    match result {
        Ok(r) => r,
        Err(payload) => Err(message_of(payload)),
    }
}

/// The message of a libjpeg error; any other panic carries on unwinding.
fn message_of(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<JpegError>() {
        Ok(e) => e.0,
        Err(other) => resume_unwind(other),
    }
}

/// # Safety
/// `cinfo` must be a created decompressor whose error manager unwinds on errors.
unsafe fn decode_created(
    cinfo: &mut jpeg_decompress_struct,
    bytes: &[u8],
    check: impl FnOnce(&Header) -> Result<(), String>,
) -> Result<RgbImage, String> {
    jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as _);
    jpeg_read_header(cinfo, 1);
    check(&Header {
        width: cinfo.image_width,
        height: cinfo.image_height,
    })?;
    // Pillow's mode from the number of components (JpegImagePlugin's SOF handler).
    let (out, cmyk) = match cinfo.num_components {
        1 => (JCS_GRAYSCALE, false),
        3 => (JCS_RGB, false),
        4 => (JCS_CMYK, true),
        n => {
            return Err(format!(
                "a JPEG of {n} colour components is not supported (1, 3 or 4, as in Pillow)"
            ))
        }
    };
    cinfo.out_color_space = out;
    jpeg_start_decompress(cinfo);
    let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
    let comps = cinfo.out_color_components as usize;
    let mut raw = vec![0u8; w * h * comps];
    let stride = w * comps;
    while (cinfo.output_scanline as usize) < h {
        let at = cinfo.output_scanline as usize * stride;
        let mut row = raw[at..at + stride].as_mut_ptr();
        // Reads at most one row, into `row`, which has room for it.
        jpeg_read_scanlines(cinfo, &mut row, 1);
    }
    // Reads up to the end-of-image marker: a file cut short after the last row is refused here.
    jpeg_finish_decompress(cinfo);
    let rgb = match (comps, cmyk) {
        (1, _) => raw.iter().flat_map(|&v| [v; 3]).collect(),
        (3, _) => raw,
        (4, true) => raw.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
        _ => return Err(format!("libjpeg gave {comps} components per pixel")),
    };
    RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| "JPEG has no pixels".to_string())
}

/// Pillow's reading of libjpeg's CMYK output: unpacked as `CMYK;I` (Adobe's inverted samples, which
/// Pillow assumes for every CMYK JPEG), then `cmyk2rgb` of `Convert.c`.
fn cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| 255 - v as i32);
    let nk = 255 - k;
    // MULDIV255(a, b): (a * b + 128) / 255, rounded, in integers.
    let muldiv255 = |a: i32| {
        let t = a * nk + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v)).clamp(0, 255) as u8)
}

/// libjpeg's fatal-error callback: unwinds to [`decode`] with the message.
extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let msg = format_message(cinfo);
    resume_unwind(Box::new(JpegError(format!("cannot decode JPEG: {msg}"))));
}

/// libjpeg's warning/trace callback. Warnings (`level` -1) about corrupt data are ignored, as Pillow ignores
/// them, except running out of data: libjpeg would pad the image with grey, where Pillow refuses the file.
extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: libjpeg passes its common struct, whose `err` is the manager set up in `decode`.
    let code = unsafe { (*cinfo.err).msg_code };
    if level == -1 && code == JWRN_JPEG_EOF as c_int {
        resume_unwind(Box::new(JpegError(
            "truncated JPEG: the data ends early".into(),
        )));
    }
}

/// libjpeg's text for the current message.
fn format_message(cinfo: &mut jpeg_common_struct) -> String {
    // JMSG_LENGTH_MAX bytes, NUL included.
    let mut buf = [0u8; 80];
    // SAFETY: `err` is the manager set up in `decode`. The C callback takes `char *buffer` and writes at
    // most JMSG_LENGTH_MAX bytes into it; the binding declares it `&[u8; 80]`, through which writing would
    // be undefined, so it is called as the function it is, with a pointer to a mutable buffer (a reference
    // and a pointer have the same representation).
    unsafe {
        if let Some(f) = (*cinfo.err).format_message {
            let f: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
                std::mem::transmute(f);
            f(cinfo, buf.as_mut_ptr());
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_is_pillows() {
        // Inverted samples: stored 255 is no ink. White, black, pure cyan, a mid value.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255]), [0, 255, 255]);
        // c = 155, k = 55: nk = 200, 200 - (155 * 200 + 128) / 255 rounded = 200 - 122 = 78.
        assert_eq!(cmyk_to_rgb(&[100, 255, 255, 200]), [78, 200, 200]);
    }
}
