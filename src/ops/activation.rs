//! Element-wise activations: the exact (erf) GELU, alone or fused with the bias before it.

use rayon::prelude::*;

use super::simd::{self, Kernel};
use super::{rows_per_task, ELEMS_PER_TASK};

/// The error function, to about 1e-7 absolute: the branch-free rational approximation used by Eigen and
/// XLA, so loops over it vectorise. Exact GELU needs it. Plain multiplies and adds, not `mul_add`: without
/// FMA enabled at compile time (the default x86-64 target) `f32::mul_add` is a libm `fmaf` call per step and
/// keeps the loop scalar (about 35% of Swin-L's time, measured).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_4e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// Exact (erf) GELU of one value: `x * 0.5 * (1 + erf(x / sqrt 2))`, as torch's default `nn.GELU`.
#[inline(always)]
pub(crate) fn gelu1(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Exact (erf) GELU, in place.
pub fn gelu(x: &mut [f32]) {
    struct Gelu<'a>(&'a mut [f32]);
    impl Kernel for Gelu<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            self.0.iter_mut().for_each(|v| *v = gelu1(*v));
        }
    }
    x.par_chunks_mut(ELEMS_PER_TASK)
        .for_each(|c| simd::run(Gelu(c)));
}

/// `x = gelu(x + bias)` over rows of `bias.len()` values, in place: a linear layer's bias and the exact GELU
/// after it in one pass (the GEMM then writes without reading a bias-filled output).
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "{} values are not rows of {n}",
        x.len()
    );
    struct BiasGelu<'a>(&'a mut [f32], &'a [f32]);
    impl Kernel for BiasGelu<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            for row in self.0.chunks_exact_mut(self.1.len()) {
                for (v, b) in row.iter_mut().zip(self.1) {
                    *v = gelu1(*v + b);
                }
            }
        }
    }
    x.par_chunks_mut(n * rows_per_task(n))
        .for_each(|c| simd::run(BiasGelu(c, bias)));
}

/// `x = gelu(x + bias[o])` along each row `o` of a transposed activation `[bias.len(), rows]`, in place:
/// [`bias_gelu`] for `hᵀ`, the same value for each element.
pub(super) fn bias_gelu_t(xt: &mut [f32], rows: usize, bias: &[f32]) {
    assert_eq!(
        xt.len(),
        bias.len() * rows,
        "activation is not [{}, {rows}]",
        bias.len()
    );
    struct Rows<'a>(&'a mut [f32], &'a [f32], usize);
    impl Kernel for Rows<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            for (row, b) in self.0.chunks_exact_mut(self.2).zip(self.1) {
                for v in row.iter_mut() {
                    *v = gelu1(*v + b);
                }
            }
        }
    }
    let per_task = rows_per_task(rows);
    xt.par_chunks_mut(rows * per_task)
        .zip(bias.par_chunks(per_task))
        .for_each(|(c, b)| simd::run(Rows(c, b, rows)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        for i in -600..=600 {
            let x = i as f32 / 100.0;
            let want = libm::erf(x as f64) as f32;
            assert!(
                (erf(x) - want).abs() < 5e-7,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn gelu_matches_exact_gelu() {
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let mut y = xs.clone();
        gelu(&mut y);
        for (x, y) in xs.iter().zip(&y) {
            let x64 = *x as f64;
            let want = x64 * 0.5 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            assert!(
                (*y as f64 - want).abs() < 2e-6,
                "gelu({x}) = {y} want {want}"
            );
        }
    }

    #[test]
    fn bias_gelu_is_gelu_of_the_sum() {
        let bias = [0.5f32, -1.0, 2.0];
        let x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.9).sin() * 3.0).collect();
        let mut want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % 3]).collect();
        gelu(&mut want);
        let mut got = x.clone();
        bias_gelu(&mut got, &bias);
        assert_eq!(got, want);
    }
}
