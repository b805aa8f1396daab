//! Weights as they are stored: f32, f16, bf16, or int8 with a per-output-channel f32 scale (the layout
//! `wstream convert --dtype int8` writes: `<name>` I8 + `<name>_scale` F32 `[out]`, `w[o, i] = q[o, i] *
//! scale[o]`). Each variant borrows the mapping; kernels widen rows to f32 a bounded chunk at a time.

use std::borrow::Cow;
use std::cell::Cell;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::ops;
use crate::ops::simd::{self, Kernel};

/// Suffix of the per-output-channel scales of an int8 weight: `<name>_scale` sits beside `<name>`.
pub const SCALE_SUFFIX: &str = "_scale";

/// Suffix of the column sums of an int8 weight (`Σ_k q[o, k]`, I32 `[out]`), which `convert` stores for the
/// W8A8 product's zero-point correction: `<name>_colsum` sits beside `<name>`.
pub const COLSUM_SUFFIX: &str = "_colsum";

/// The name of the column-sum tensor beside an int8 weight.
pub fn colsum_name(weight: &str) -> String {
    format!("{weight}{COLSUM_SUFFIX}")
}

/// The name of the scale tensor beside an int8 weight.
pub fn scale_name(weight: &str) -> String {
    format!("{weight}{SCALE_SUFFIX}")
}

thread_local! {
    /// (largest chunk buffer, sum of whole small tensors) widened on this thread since the last take.
    static SCRATCH: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Notes a chunk buffer of `bytes` that a kernel widens rows into (reused within the call).
pub(crate) fn note_chunk(bytes: usize) {
    SCRATCH.with(|s| {
        let (chunk, small) = s.get();
        s.set((chunk.max(bytes), small));
    });
}

/// The f32 scratch this thread widened since the last call, and resets it: the largest chunk buffer plus
/// every small tensor widened whole. An upper bound on the widening memory held at once by the blocks run in
/// between; 0 for f32 weights, which are read in place.
pub fn take_scratch() -> usize {
    SCRATCH.with(|s| {
        let (chunk, small) = s.replace((0, 0));
        chunk + small
    })
}

/// A weight tensor viewed as `[out, per_row]` rows, in its stored dtype.
#[derive(Debug, Clone)]
pub enum Weight<'a> {
    F32(Cow<'a, [f32]>),
    F16(Cow<'a, [f16]>),
    Bf16(Cow<'a, [bf16]>),
    I8 {
        q: Cow<'a, [i8]>,
        scale: Cow<'a, [f32]>,
    },
    /// f32 in the packed kernel's panel order (`ops::packed`), as `wstream convert --layout packed` stores
    /// it: `[out / NR, in, NR]`, read by the packed kernel in place.
    PackedF32(Cow<'a, [f32]>),
}

impl Weight<'_> {
    /// Elements in the tensor.
    pub fn len(&self) -> usize {
        match self {
            Weight::F32(w) => w.len(),
            Weight::F16(w) => w.len(),
            Weight::Bf16(w) => w.len(),
            Weight::I8 { q, .. } => q.len(),
            Weight::PackedF32(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 data when it is stored as f32: kernels then read it in place.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Weight::F32(w) => Some(w),
            _ => None,
        }
    }

    /// Widens rows `first..first + dst.len() / per_row` of the `[out, per_row]` matrix into `dst`.
    /// f16 and bf16 widen exactly; int8 rows are `q * scale[row]`.
    pub fn rows_into(&self, first: usize, per_row: usize, dst: &mut [f32]) {
        let n = dst.len() / per_row.max(1);
        assert_eq!(dst.len(), n * per_row, "destination is not whole rows");
        let span = first * per_row..(first + n) * per_row;
        let chunk = per_row * ops::rows_per_task(per_row);
        match self {
            Weight::F32(w) => dst.copy_from_slice(&w[span]),
            Weight::PackedF32(w) => dst.par_chunks_mut(chunk).enumerate().for_each(|(c, d)| {
                ops::packed::unpack_range(w, per_row, span.start + c * chunk, d)
            }),
            Weight::F16(w) => dst
                .par_chunks_mut(chunk)
                .zip(w[span].par_chunks(chunk))
                .for_each(|(d, s)| s.convert_to_f32_slice(d)),
            Weight::Bf16(w) => dst
                .par_chunks_mut(chunk)
                .zip(w[span].par_chunks(chunk))
                .for_each(|(d, s)| simd::run(WidenBf16(d, s))),
            Weight::I8 { q, scale } => dst
                .par_chunks_mut(chunk)
                .zip(q[span].par_chunks(chunk))
                .enumerate()
                .for_each(|(c, (d, s))| {
                    let first = first + c * chunk / per_row;
                    simd::run(WidenI8(d, s, &scale[first..], per_row))
                }),
        }
    }

    /// The whole tensor as f32: borrowed when stored as f32, widened otherwise. For small tensors (norms,
    /// biases, depthwise kernels); large matrices go through [`Weight::rows_into`] in chunks.
    pub fn to_f32(&self, per_row: usize) -> Cow<'_, [f32]> {
        match self {
            Weight::F32(w) => Cow::Borrowed(w),
            _ => {
                let mut out = vec![0.0; self.len()];
                self.rows_into(0, per_row, &mut out);
                SCRATCH.with(|s| {
                    let (chunk, small) = s.get();
                    s.set((chunk, small + out.len() * 4));
                });
                Cow::Owned(out)
            }
        }
    }
}

/// bf16 to f32: the 16 bits become the top half of the f32 (exact).
struct WidenBf16<'a>(&'a mut [f32], &'a [bf16]);

impl Kernel for WidenBf16<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (d, s) in self.0.iter_mut().zip(self.1) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

/// Whole int8 rows of `per_row` values to f32, row r scaled by `scale[r]`.
struct WidenI8<'a>(&'a mut [f32], &'a [i8], &'a [f32], usize);

impl Kernel for WidenI8<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let WidenI8(dst, q, scale, per_row) = self;
        for ((d, s), &k) in dst
            .chunks_exact_mut(per_row)
            .zip(q.chunks_exact(per_row))
            .zip(scale)
        {
            for (d, &s) in d.iter_mut().zip(s) {
                *d = s as f32 * k;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_matches_each_dtype() {
        let src = [1.5f32, -2.25, 0.1, 3.0e4, -7.0, 0.0];
        let f16s: Vec<f16> = src.iter().map(|&v| f16::from_f32(v)).collect();
        let bf16s: Vec<bf16> = src.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut got = [0.0f32; 6];
        Weight::F16(Cow::Borrowed(&f16s)).rows_into(0, 3, &mut got);
        assert_eq!(
            got.to_vec(),
            f16s.iter().map(|v| v.to_f32()).collect::<Vec<_>>()
        );
        Weight::Bf16(Cow::Borrowed(&bf16s)).rows_into(0, 3, &mut got);
        assert_eq!(
            got.to_vec(),
            bf16s.iter().map(|v| v.to_f32()).collect::<Vec<_>>()
        );
        let q = [1i8, -2, 127, -127, 0, 5];
        let w = Weight::I8 {
            q: Cow::Borrowed(&q),
            scale: Cow::Borrowed(&[0.5, 2.0]),
        };
        let mut row = [0.0f32; 3];
        w.rows_into(1, 3, &mut row);
        assert_eq!(row, [-254.0, 0.0, 10.0]);
        assert_eq!(w.to_f32(3).to_vec(), [0.5, -1.0, 63.5, -254.0, 0.0, 10.0]);
    }
}
