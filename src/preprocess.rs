//! Image inputs: decoding image files the way Pillow does, and timm's eval transform
//! (`transforms_imagenet_eval`) from a model's `pretrained_cfg`, pixel for pixel.
//!
//! timm opens an image with Pillow, calls `.convert("RGB")` and runs
//! `Resize(floor(size / crop_pct))` -> `CenterCrop(size)` -> `ToTensor` -> `Normalize(mean, std)`.
//! The resize is Pillow's `Image.resize(..., BICUBIC)` on 8-bit data: a separable convolution whose
//! filter support widens with the downscale factor (antialiasing), coefficients normalised to sum to one
//! and turned into 22-bit fixed point, one pass per axis with the intermediate image rounded and clipped
//! to `u8` (horizontal first, except when Pillow 13 chooses vertical first). [`Preprocess::apply`]
//! reproduces that arithmetic (`Resample.c`), so on the same decoded pixels it gives timm's tensor
//! bit for bit. JPEGs are decoded by libjpeg-turbo's decoder set up as Pillow sets it up (`crate::jpeg`),
//! so from a JPEG file too the tensor is timm's.

use std::fmt;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::models::ModelConfig;
use crate::transform::{Overrides, Transform};

/// Images wider or taller than this are refused before decoding.
pub const MAX_SIDE: u32 = 20_000;
/// Images with more pixels than this are refused before decoding (the default of
/// `Options::max_pixels`, `--max-pixels`): Pillow's decompression-bomb threshold `Image.MAX_IMAGE_PIXELS`,
/// where Pillow warns (it refuses at twice as many). Decoded, such an image takes 256 MiB as RGB.
pub const MAX_PIXELS: u64 = 89_478_485;
/// Files larger than this are refused before reading.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// The most the decoder may allocate (the decoded image included).
const MAX_DECODE_BYTES: u64 = 1 << 30;

/// timm's defaults when `pretrained_cfg` leaves a field out (`timm.data.constants`).
pub const DEFAULT_CROP_PCT: f64 = 0.875;
pub const IMAGENET_DEFAULT_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_DEFAULT_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Pillow's resampling filters that timm's eval transform uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Triangle filter, support 1 (`Image.BILINEAR`).
    Bilinear,
    /// Keys cubic, a = -0.5, support 2 (`Image.BICUBIC`).
    Bicubic,
    /// Lanczos-windowed sinc, support 3 (`Image.LANCZOS`).
    Lanczos,
    /// Nearest neighbour (`Image.NEAREST`): one input pixel per output pixel, no filter.
    Nearest,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
            // Not a convolution: `resize_part` picks pixels instead of building taps.
            Filter::Nearest => 0.0,
        }
    }

    /// `bilinear_filter` / `bicubic_filter` of Pillow's `Resample.c`, same operations in the same order.
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            // Pillow's window is [-3, 3): not symmetric, so no `abs` first.
            Filter::Lanczos if (-3.0..3.0).contains(&x) => sinc(x) * sinc(x / 3.0),
            Filter::Lanczos | Filter::Nearest => 0.0,
        }
    }

    /// timm's name of the filter (`pretrained_cfg.interpolation`).
    pub fn name(self) -> &'static str {
        match self {
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
            Filter::Lanczos => "lanczos",
            Filter::Nearest => "nearest",
        }
    }

    /// The filter timm names `name`, if it is one of these.
    pub fn from_name(name: &str) -> Option<Filter> {
        match name {
            "bicubic" => Some(Filter::Bicubic),
            "bilinear" => Some(Filter::Bilinear),
            "lanczos" => Some(Filter::Lanczos),
            "nearest" => Some(Filter::Nearest),
            _ => None,
        }
    }
}

/// Pillow's `sinc_filter`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// How the resized image is fitted to the model's input (timm's `crop_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// Keep the aspect ratio, scale the shorter side to `scale_size`, crop the centre.
    Center,
    /// Scale each side to `scale_size` (aspect ratio not kept), crop the centre.
    Squash,
    /// Keep the aspect ratio, scale the longer side to `scale_size`, pad with the mean colour, crop the
    /// centre.
    Border,
}

impl CropMode {
    /// timm's name of the mode (`pretrained_cfg.crop_mode`).
    pub fn name(self) -> &'static str {
        match self {
            CropMode::Center => "center",
            CropMode::Squash => "squash",
            CropMode::Border => "border",
        }
    }

    /// The mode timm names `name`.
    pub fn from_name(name: &str) -> Option<CropMode> {
        match name {
            "center" => Some(CropMode::Center),
            "squash" => Some(CropMode::Squash),
            "border" => Some(CropMode::Border),
            _ => None,
        }
    }
}

/// A model's eval-time preprocessing: a decoded RGB image in, its `[3, h, w]` input tensor out.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// The model's input `[h, w]` (the crop).
    pub size: [usize; 2],
    /// `[h, w]` the image is resized to before cropping: `floor(size / crop_pct)` per side. With
    /// [`CropMode::Center`] and a square `size` only the shorter side gets this length.
    pub scale_size: [usize; 2],
    pub crop_mode: CropMode,
    pub interpolation: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// The preprocessing `pretrained_cfg` asks for, resolved as timm's `resolve_data_config` does by
    /// default (the train size: `test_input_size` / `test_crop_pct` ignored; [`Transform::resolve`] takes
    /// them and the caller's overrides): input 3x224x224, crop_pct 0.875, bicubic, crop mode `center` and
    /// ImageNet mean/std where the config leaves them out. Errors (an interpolation other than
    /// bicubic/bilinear/lanczos/nearest, an unknown crop mode, sizes or statistics that cannot work) name `path`,
    /// the model the config belongs to.
    pub fn from_config(cfg: &ModelConfig, path: &Path) -> Result<Self> {
        let train = Overrides {
            use_train_size: true,
            ..Overrides::default()
        };
        Ok(Transform::resolve(cfg, &train, path)?.preprocess())
    }

    /// The `[h, w]` the image is resized to before the crop (torchvision's `Resize` / timm's
    /// `ResizeKeepRatio` size rules).
    pub fn resized_size(&self, img_h: usize, img_w: usize) -> [usize; 2] {
        let [th, tw] = self.scale_size;
        // ResizeKeepRatio.get_params: ratio = max * longest + min * (1 - longest); round(side / ratio)
        let keep_ratio = |longest: bool| {
            let (rh, rw) = (img_h as f64 / th as f64, img_w as f64 / tw as f64);
            let ratio = if longest { rh.max(rw) } else { rh.min(rw) };
            [img_h, img_w].map(|s| (s as f64 / ratio).round_ties_even() as usize)
        };
        match self.crop_mode {
            CropMode::Squash => self.scale_size,
            CropMode::Border => keep_ratio(true),
            CropMode::Center if th == tw => {
                // torchvision `_compute_resized_output_size` with a single int: the shorter side gets
                // it, the longer `int(size * long / short)`.
                let long_of = |long: usize, short: usize| {
                    ((th as u64 * long as u64) as f64 / short as f64) as usize
                };
                if img_w <= img_h {
                    [long_of(img_h, img_w), th]
                } else {
                    [th, long_of(img_w, img_h)]
                }
            }
            CropMode::Center => keep_ratio(false),
        }
    }

    /// The model input for `img`: `[3, h, w]` floats in CHW order, as timm's eval transform makes it.
    ///
    /// # Panics
    /// If `img` has no pixels ([`load_rgb`] never returns such an image).
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (in_w, in_h) = (img.width() as usize, img.height() as usize);
        assert!(in_w > 0 && in_h > 0, "Preprocess::apply: empty image");
        let [out_h, out_w] = self.size;
        let [rh, rw] = self.resized_size(in_h, in_w);
        let (ys, xs) = (crop_axis(rh, out_h), crop_axis(rw, out_w));
        let part = resize_part(
            img,
            [rh, rw],
            ys.src.clone(),
            xs.src.clone(),
            self.interpolation,
        );
        // torchvision pads with 0; timm's border mode with round(255 * mean).
        let fill = match self.crop_mode {
            CropMode::Border => self
                .mean
                .map(|m| (255.0 * m as f64).round_ties_even() as u8),
            _ => [0; 3],
        };
        let part_w = xs.src.len();
        let plane = out_h * out_w;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..out_h {
            for x in 0..out_w {
                let px = match (ys.source_of(y), xs.source_of(x)) {
                    (Some(sy), Some(sx)) => {
                        let at = (sy * part_w + sx) * 3;
                        [part[at], part[at + 1], part[at + 2]]
                    }
                    _ => fill,
                };
                for c in 0..3 {
                    // ToTensor (`/ 255` in f32), then Normalize (`(x - mean) / std` in f32).
                    out[c * plane + y * out_w + x] =
                        (px[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }
}

impl fmt::Display for Preprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [sh, sw] = self.scale_size;
        let [h, w] = self.size;
        let filter = self.interpolation.name();
        match self.crop_mode {
            CropMode::Center if sh == sw => write!(f, "resize shorter side to {sh} ({filter})")?,
            CropMode::Center => write!(f, "resize to cover {sh}x{sw} ({filter})")?,
            CropMode::Squash => write!(f, "resize to {sh}x{sw} ({filter})")?,
            CropMode::Border => write!(f, "resize to fit {sh}x{sw} ({filter})")?,
        }
        let pad = if self.crop_mode == CropMode::Border {
            " (padded with the mean colour)"
        } else {
            ""
        };
        write!(
            f,
            ", centre crop {h}x{w}{pad}, normalise mean {:?} std {:?}",
            self.mean, self.std
        )
    }
}

/// One axis of torchvision's `center_crop` (timm's `center_crop_or_pad`) of a resized side of length
/// `resized` to `crop`: pad both ends when the crop is longer, else start at `round((resized - crop) / 2)`.
struct CropAxis {
    /// The resized pixels the crop uses.
    src: Range<usize>,
    /// The crop index that receives `src.start`.
    dst: usize,
}

impl CropAxis {
    /// The index into `src` of crop pixel `i`, or `None` for padding.
    fn source_of(&self, i: usize) -> Option<usize> {
        let j = i.checked_sub(self.dst)?;
        (j < self.src.len()).then_some(j)
    }
}

fn crop_axis(resized: usize, crop: usize) -> CropAxis {
    if crop > resized {
        CropAxis {
            src: 0..resized,
            dst: (crop - resized) / 2,
        }
    } else {
        // `int(round((image_height - crop_height) / 2.0))`: Python rounds halves to even.
        let start = ((resized - crop) as f64 / 2.0).round_ties_even() as usize;
        CropAxis {
            src: start..start + crop,
            dst: 0,
        }
    }
}

/// Pillow's `PRECISION_BITS` for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The resampling taps of some outputs of one axis (`precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    /// Per output: first input index and the range of its coefficients in `k`.
    bounds: Vec<(usize, Range<usize>)>,
    k: Vec<i32>,
}

impl Taps {
    /// Taps for outputs `outs` of resizing `in_size` samples to `out_size` (`out_size > 0`).
    fn new(in_size: usize, out_size: usize, outs: Range<usize>, filter: Filter) -> Taps {
        // Pillow's box is `float`; `(double)(in1 - in0) / outSize`.
        let scale = (in_size as f32) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(outs.len());
        let mut k = Vec::new();
        let mut w = Vec::new();
        for xx in outs {
            let center = (xx as f64 + 0.5) * scale; // in0 = 0
                                                    // `(int)` truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            w.clear();
            let mut ww = 0.0;
            for x in xmin..xmax.max(xmin) {
                let v = filter.weight((x as f64 - center + 0.5) * ss);
                w.push(v);
                ww += v;
            }
            let start = k.len();
            k.extend(w.iter().map(|&v| {
                let v = if ww != 0.0 { v / ww } else { v };
                let scaled = v * (1u32 << PRECISION_BITS) as f64;
                if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                }
            }));
            bounds.push((xmin as usize, start..k.len()));
        }
        Taps { bounds, k }
    }

    /// The input range all the outputs read.
    fn input_range(&self) -> Range<usize> {
        let first = self.bounds.first().map_or(0, |b| b.0);
        let last = self.bounds.last().map_or(0, |b| b.0 + b.1.len());
        first..last.max(first)
    }
}

/// `clip8`: the accumulator (which started at half a unit) shifted down and clamped to a byte.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rows `ys` and columns `xs` of `img` resized to `[h, w]` = `out` as Pillow's `ImagingResample` does,
/// as an interleaved RGB buffer `ys.len() x xs.len()`. Two passes, each rounded and clipped to `u8`;
/// a pass whose size does not change is skipped (it would be the identity). Pillow 13 runs the vertical
/// pass first when the height shrinks by more than twice as many pixels as the width
/// (python-pillow/Pillow#9549); earlier versions always ran the horizontal pass first.
/// Computing only the pixels the crop keeps gives the same values, since every output pixel depends on
/// its own taps alone.
fn resize_part(
    img: &RgbImage,
    out: [usize; 2],
    ys: Range<usize>,
    xs: Range<usize>,
    filter: Filter,
) -> Vec<u8> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let [out_h, out_w] = out;
    if ys.is_empty() || xs.is_empty() {
        return Vec::new();
    }
    let src = img.as_raw();
    if filter == Filter::Nearest {
        return nearest(
            src,
            in_w,
            nearest_index(in_h, out_h, ys),
            nearest_index(in_w, out_w, xs),
        );
    }
    let vert = (out_h != in_h).then(|| Taps::new(in_h, out_h, ys.clone(), filter));
    let horiz = (out_w != in_w).then(|| Taps::new(in_w, out_w, xs.clone(), filter));
    let vertical_first = out_h < in_h && (in_h - out_h) as i64 > 2 * (in_w as i64 - out_w as i64);
    match (&vert, &horiz) {
        (None, None) => region(src, in_w, ys, xs),
        (None, Some(h)) => horizontal(src, in_w, 0, ys, h),
        (Some(v), None) => vertical(src, in_w, 0, xs, v),
        (Some(v), Some(h)) if vertical_first => {
            let cols = h.input_range();
            let tmp = vertical(src, in_w, 0, cols.clone(), v);
            horizontal(&tmp, cols.len(), cols.start, 0..ys.len(), h)
        }
        (Some(v), Some(h)) => {
            let rows = v.input_range();
            let tmp = horizontal(src, in_w, 0, rows.clone(), h);
            vertical(&tmp, xs.len(), rows.start, 0..xs.len(), v)
        }
    }
}

/// The input index of outputs `outs` of resizing `in_size` samples to `out_size` with `Image.NEAREST`:
/// Pillow's `ImagingScaleAffine`, which starts half a step in and adds the step per output (the sum kept
/// in a double, so the same additions in the same order), truncating toward zero.
fn nearest_index(in_size: usize, out_size: usize, outs: Range<usize>) -> Vec<usize> {
    let step = (in_size as f32) as f64 / out_size as f64;
    let mut at = step * 0.5;
    let mut index = Vec::with_capacity(outs.len());
    for o in 0..outs.end {
        if o >= outs.start {
            index.push((at as usize).min(in_size - 1));
        }
        at += step;
    }
    index
}

/// The pixels at rows `ys` x columns `xs` of an RGB buffer `src_w` pixels wide.
fn nearest(src: &[u8], src_w: usize, ys: Vec<usize>, xs: Vec<usize>) -> Vec<u8> {
    ys.iter()
        .flat_map(|&y| {
            xs.iter()
                .flat_map(move |&x| &src[(y * src_w + x) * 3..(y * src_w + x + 1) * 3])
        })
        .copied()
        .collect()
}

/// Rows `rows` and columns `cols` of an RGB buffer `src_w` pixels wide.
fn region(src: &[u8], src_w: usize, rows: Range<usize>, cols: Range<usize>) -> Vec<u8> {
    rows.flat_map(|y| &src[(y * src_w + cols.start) * 3..(y * src_w + cols.end) * 3])
        .copied()
        .collect()
}

/// `ImagingResampleHorizontal_8bpc` over rows `rows` of `src` (RGB, `src_w` pixels wide, holding the
/// input columns from `src_x0` on): one output row per row, one output pixel per tap set.
fn horizontal(src: &[u8], src_w: usize, src_x0: usize, rows: Range<usize>, taps: &Taps) -> Vec<u8> {
    let row_len = taps.bounds.len() * 3;
    let mut out = vec![0u8; rows.len() * row_len];
    out.par_chunks_mut(row_len).zip(rows).for_each(|(dst, y)| {
        let line = &src[y * src_w * 3..(y + 1) * src_w * 3];
        for (px, (xmin, kr)) in dst.chunks_exact_mut(3).zip(&taps.bounds) {
            let first = (xmin - src_x0) * 3;
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (p, &k) in line[first..].chunks_exact(3).zip(&taps.k[kr.clone()]) {
                for c in 0..3 {
                    acc[c] += p[c] as i64 * k as i64;
                }
            }
            for c in 0..3 {
                px[c] = clip8(acc[c]);
            }
        }
    });
    out
}

/// `ImagingResampleVertical_8bpc` over columns `cols` of `src` (RGB, `src_w` pixels wide, holding the
/// input rows from `src_y0` on): one output row per tap set.
fn vertical(src: &[u8], src_w: usize, src_y0: usize, cols: Range<usize>, taps: &Taps) -> Vec<u8> {
    let row_len = cols.len() * 3;
    let mut out = vec![0u8; taps.bounds.len() * row_len];
    out.par_chunks_mut(row_len)
        .zip(&taps.bounds)
        .for_each(|(dst, (ymin, kr))| {
            let ks = &taps.k[kr.clone()];
            let first = ymin - src_y0;
            for (i, v) in dst.iter_mut().enumerate() {
                let at = cols.start * 3 + i;
                let mut acc = 1i64 << (PRECISION_BITS - 1);
                for (j, &k) in ks.iter().enumerate() {
                    acc += src[(first + j) * src_w * 3 + at] as i64 * k as i64;
                }
                *v = clip8(acc);
            }
        });
    out
}

/// Reads a JPEG, PNG, WebP, BMP, TIFF or GIF file (recognised by its content, not its name) as 8-bit RGB,
/// the way Pillow's `Image.open(path).convert("RGB")` sees it: grey is replicated into R, G and B, an
/// alpha channel is dropped (not composited), palettes are expanded, CMYK JPEGs are converted with
/// Pillow's formula, 16-bit samples keep their high byte; of an animated GIF or WebP, the first frame.
/// EXIF orientation and ICC profiles are ignored: Pillow does not apply them on open, so timm does not.
///
/// Refused with [`Error::Input`] and one message saying what is wrong: a FIFO or device, an empty,
/// unreadable, truncated or corrupt file, another format, or an image over [`MAX_SIDE`] on a side or
/// [`MAX_PIXELS`] in all (checked from the header, before decoding; [`load_rgb_limited`] takes another pixel
/// limit).
///
/// Deliberate difference: Pillow opens a 16-bit greyscale PNG as mode `I;16`, whose `convert("RGB")`
/// clips every value above 255 to white; here it keeps the high byte, like every other 16-bit image.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_rgb_limited(path, MAX_PIXELS)
}

/// [`load_rgb`] refusing images of more than `max_pixels` pixels (checked from the header).
pub fn load_rgb_limited(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let input_err = |msg: String| Error::Input {
        path: path.into(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(input_err("is a folder, not an image file".into()));
    }
    if !meta.is_file() {
        // A FIFO or device has no length (it read as "empty") and reading one can block forever.
        return Err(input_err(format!(
            "is {}, not a regular file; give an image file",
            crate::fsutil::kind_of(&meta)
        )));
    }
    if meta.len() == 0 {
        return Err(input_err("file is empty (0 bytes), not an image".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(input_err(format!(
            "file is {} bytes, over the {} MiB limit for an image",
            meta.len(),
            MAX_FILE_BYTES >> 20
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // The decoders are not supposed to panic on any input; should one still do so, report it as a
    // bad file rather than taking the process down.
    std::panic::catch_unwind(|| decode_rgb(&bytes, max_pixels))
        .unwrap_or_else(|_| Err("the image decoder failed on this file (corrupt data?)".into()))
        .map_err(input_err)
}

/// [`load_rgb_limited`] on an image held in memory (a request body); errors name `name`.
pub fn decode_rgb_bytes(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<RgbImage> {
    let input_err = |msg: String| Error::Input {
        path: name.into(),
        msg,
    };
    if bytes.is_empty() {
        return Err(input_err("is empty (0 bytes), not an image".into()));
    }
    std::panic::catch_unwind(|| decode_rgb(bytes, max_pixels))
        .unwrap_or_else(|_| Err("the image decoder failed on this data (corrupt data?)".into()))
        .map_err(input_err)
}

/// The formats [`load_rgb`] reads, with the name its messages use.
const FORMATS: [(ImageFormat, &str); 6] = [
    (ImageFormat::Jpeg, "JPEG"),
    (ImageFormat::Png, "PNG"),
    (ImageFormat::WebP, "WebP"),
    (ImageFormat::Bmp, "BMP"),
    (ImageFormat::Tiff, "TIFF"),
    (ImageFormat::Gif, "GIF"),
];

/// The size limits of [`load_rgb_limited`], checked from the header.
fn check_size(name: &str, w: u32, h: u32, max_pixels: u64) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("{name} image has no pixels ({w}x{h})"));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "{name} image is {w}x{h}, over the limit of {MAX_SIDE} pixels a side"
        ));
    }
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(format!(
            "{name} image is {w}x{h} = {pixels} pixels, over the limit of {max_pixels} \
             (a decompression bomb?); raise it with --max-pixels"
        ));
    }
    Ok(())
}

/// [`load_rgb`] on the bytes of a file; the error is the message.
fn decode_rgb(bytes: &[u8], max_pixels: u64) -> std::result::Result<RgbImage, String> {
    let (format, name) = match image::guess_format(bytes) {
        Ok(f) => match FORMATS.iter().find(|(known, _)| *known == f) {
            Some(&found) => found,
            None => {
                return Err(format!(
                "is an image in {} format; only JPEG, PNG, WebP, BMP, TIFF and GIF are supported",
                f.extensions_str()
                    .first()
                    .map_or("other", |e| e)
                    .to_uppercase()
            ))
            }
        },
        Err(_) => {
            // A file cut off inside the signature itself is too short for `guess_format` to name.
            const SIGNATURES: [(&str, &[u8]); 2] =
                [("JPEG", &[0xFF, 0xD8, 0xFF]), ("PNG", b"\x89PNG\r\n\x1a\n")];
            if let Some((name, _)) = SIGNATURES
                .iter()
                .find(|(_, sig)| bytes.len() < sig.len() && sig.starts_with(bytes))
            {
                return Err(format!(
                    "truncated {name}: the file is only {} byte(s), cut off inside the {name} signature",
                    bytes.len()
                ));
            }
            let head = &bytes[..bytes.len().min(512)];
            // Text is valid UTF-8 (bar a character cut at the 512-byte mark) without control bytes.
            let utf8 = match std::str::from_utf8(head) {
                Ok(_) => true,
                Err(e) => e.error_len().is_none(),
            };
            let text = utf8
                && head
                    .iter()
                    .all(|&b| !b.is_ascii_control() || b.is_ascii_whitespace());
            return Err(format!(
                "not an image wstream reads (unrecognised content{}); \
                 the formats read are JPEG, PNG, WebP, BMP, TIFF and GIF",
                if text { ", it looks like text" } else { "" }
            ));
        }
    };
    if format == ImageFormat::Jpeg {
        // Checked before libjpeg sees the file, for a message that says where it stops.
        jpeg_check_complete(bytes).map_err(|what| format!("truncated or corrupt JPEG: {what}"))?;
        return crate::jpeg::decode(bytes, |h| check_size(name, h.width, h.height, max_pixels));
    }
    // A raised pixel limit raises the decoder's too: up to 8 bytes a pixel (16-bit RGBA).
    let max_alloc = MAX_DECODE_BYTES.max(max_pixels.saturating_mul(8));
    let describe = |e: ImageError| match e {
        ImageError::Decoding(e) => format!("corrupt {name} data: {e}"),
        ImageError::Limits(e) => format!(
            "{name} image too large to decode within {} MiB: {e}",
            max_alloc >> 20
        ),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {name}: the data ends early")
        }
        ImageError::Unsupported(e) => format!("unsupported kind of {name}: {e}"),
        e => format!("cannot decode {name}: {e}"),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(describe)?;
    let (w, h) = decoder.dimensions();
    check_size(name, w, h, max_pixels)?;
    // For an animated GIF or WebP this is the first frame, the one Pillow opens.
    let img = DynamicImage::from_decoder(decoder).map_err(describe)?;
    Ok(to_rgb_like_pil(img))
}

/// Pillow's `convert("RGB")` of what Pillow would have opened.
fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    fn gather<T: Copy>(
        w: u32,
        h: u32,
        raw: &[T],
        chans: usize,
        pick: [usize; 3],
        to8: impl Fn(T) -> u8,
    ) -> RgbImage {
        let data = raw
            .chunks_exact(chans)
            .flat_map(|p| pick.map(|i| to8(p[i])))
            .collect();
        RgbImage::from_raw(w, h, data).expect("buffer size matches the dimensions")
    }
    let (w, h) = (img.width(), img.height());
    let id = |v: u8| v;
    let high = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => gather(w, h, i.as_raw(), 4, [0, 1, 2], id),
        DynamicImage::ImageLuma8(i) => gather(w, h, i.as_raw(), 1, [0; 3], id),
        DynamicImage::ImageLumaA8(i) => gather(w, h, i.as_raw(), 2, [0; 3], id),
        DynamicImage::ImageRgb16(i) => gather(w, h, i.as_raw(), 3, [0, 1, 2], high),
        DynamicImage::ImageRgba16(i) => gather(w, h, i.as_raw(), 4, [0, 1, 2], high),
        DynamicImage::ImageLuma16(i) => gather(w, h, i.as_raw(), 1, [0; 3], high),
        DynamicImage::ImageLumaA16(i) => gather(w, h, i.as_raw(), 2, [0; 3], high),
        other => other.to_rgb8(),
    }
}

/// Walks a JPEG's marker segments and entropy-coded scans up to the end-of-image marker; a file that
/// stops before it is truncated.
fn jpeg_check_complete(b: &[u8]) -> std::result::Result<(), String> {
    const EOF: &str = "the file ends before the JPEG end-of-image marker";
    let mut i = 2; // past SOI (FF D8), which guess_format checked
    loop {
        // Find the next marker: FF, any fill FFs, then a code that is not 00.
        while i < b.len() && b[i] != 0xFF {
            i += 1; // stray bytes between segments; decoders skip them
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return Err(EOF.into());
        };
        i += 1;
        match code {
            0xD9 => return Ok(()),
            0x00 | 0x01 | 0xD0..=0xD8 => continue, // no length field
            _ => {}
        }
        let len = match b.get(i..i + 2) {
            Some(l) => u16::from_be_bytes([l[0], l[1]]) as usize,
            None => return Err(EOF.into()),
        };
        if len < 2 {
            return Err(format!(
                "marker FF{code:02X} at byte {} has a bad length {len}",
                i - 2
            ));
        }
        i += len;
        if i > b.len() {
            return Err(EOF.into());
        }
        if code == 0xDA {
            // Entropy-coded data follows start-of-scan; it ends at a marker other than a stuffed
            // zero (FF 00) or a restart marker (FF D0..D7).
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return Err(EOF.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Indices Pillow 13's `Image.resize(..., NEAREST)` picks (read back from a 0, 1, 2, ... ramp).
    #[test]
    fn nearest_picks_the_pixels_pillow_picks() {
        assert_eq!(nearest_index(3, 7, 0..7), [0, 0, 1, 1, 1, 2, 2]);
        assert_eq!(nearest_index(10, 4, 0..4), [1, 3, 6, 8]);
        assert_eq!(nearest_index(7, 3, 0..3), [1, 3, 5]);
        assert_eq!(nearest_index(5, 5, 0..5), [0, 1, 2, 3, 4]);
        let wide = nearest_index(640, 224, 0..224);
        assert_eq!([wide[0], wide[1], wide[111], wide[223]], [1, 4, 318, 638]);
        assert_eq!(nearest_index(3, 7, 2..5), [1, 1, 1]);
    }
}
