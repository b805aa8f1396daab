//! Layer normalisation over the last dimension.

use rayon::prelude::*;

use super::rows_per_task;
use super::simd::{self, Kernel};

/// LayerNorm over the last dimension (`dim` values per row), in place.
pub fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    assert!(
        weight.len() == dim && bias.len() == dim,
        "norm parameters must have {dim} values"
    );
    struct Norm<'a> {
        rows: &'a mut [f32],
        weight: &'a [f32],
        bias: &'a [f32],
        eps: f32,
    }
    impl Kernel for Norm<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let dim = self.weight.len();
            for row in self.rows.chunks_exact_mut(dim) {
                let add = |a: f32, b: f32| a + b;
                let mean = simd::reduce(row, 0.0, |v| v, add) / dim as f32;
                let var = simd::reduce(row, 0.0, |v| (v - mean) * (v - mean), add) / dim as f32;
                let inv = 1.0 / (var + self.eps).sqrt();
                for ((v, w), b) in row.iter_mut().zip(self.weight).zip(self.bias) {
                    *v = (*v - mean) * inv * w + b;
                }
            }
        }
    }
    x.par_chunks_mut(dim * rows_per_task(dim)).for_each(|rows| {
        simd::run(Norm {
            rows,
            weight,
            bias,
            eps,
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_normalises() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.5; 4], 1e-6);
        let want = [-1.341_640_8, -0.447_213_6, 0.447_213_6, 1.341_640_8];
        for (v, w) in x[..4].iter().zip(want) {
            assert!((v - 0.5 - w).abs() < 1e-5);
        }
        assert!(x[4..].iter().all(|v| (v - 0.5).abs() < 1e-6));
    }
}
