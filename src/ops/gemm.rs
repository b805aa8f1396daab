//! The one safe door to the `gemm` crate: strided matrix views whose every element is proven in bounds
//! before the (unsafe) call.

use rayon::prelude::*;

/// A read-only strided matrix view over a slice: element (r, c) is `data[r * row_stride + c * col_stride]`.
/// A transposed view is the same slice with the strides swapped: no copy.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a dense row-major `rows x cols` matrix, i.e. a `cols x rows` view.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows: cols,
            cols: rows,
            row_stride: 1,
            col_stride: cols,
        }
    }

    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1)
                .checked_mul(self.row_stride)
                .and_then(|a| {
                    (self.cols - 1)
                        .checked_mul(self.col_stride)
                        .and_then(|b| a.checked_add(b))
                })
                .is_some_and(|last| last < self.data.len())
    }
}

/// `dst = a × b` (or `dst += a × b` with `accumulate`), `dst` dense row-major `a.rows x b.cols`, on the
/// rayon pool's threads.
pub fn matmul(dst: &mut [f32], a: MatRef, b: MatRef, accumulate: bool) {
    gemm_into(dst, false, a, b, accumulate)
}

/// [`matmul`] writing the transpose: `dst = (a × b)ᵀ`, `dst` dense row-major `b.cols x a.rows`.
pub fn matmul_t(dst: &mut [f32], a: MatRef, b: MatRef, accumulate: bool) {
    gemm_into(dst, true, a, b, accumulate)
}

fn gemm_into(dst: &mut [f32], transposed: bool, a: MatRef, b: MatRef, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination size");
    assert!(a.in_bounds() && b.in_bounds(), "matrix view out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // Element (i, j) of the product goes to dst[i * n + j], or to dst[j * m + i] when transposed.
    let (dst_cs, dst_rs) = if transposed { (m, 1) } else { (1, n) };
    let out = DstPtr(dst.as_mut_ptr());
    let parts = split_parts(m, rayon::current_num_threads());
    // Part p is rows bound(p)..bound(p + 1): even shares rounded to whole tiles.
    let bound = |p: usize| {
        if p == parts {
            m
        } else {
            ((m * p / parts + SPLIT_ALIGN / 2) / SPLIT_ALIGN * SPLIT_ALIGN).min(m)
        }
    };
    let part = |p: usize| {
        let (i0, i1) = (bound(p), bound(p + 1));
        if i1 > i0 {
            // SAFETY: part p writes only the elements (i, j) with i in i0..i1, a set no other part touches
            // (the bounds increase with p), so the parts never write the same element; see `kernel` for
            // the bounds.
            #[allow(unsafe_code)]
            unsafe {
                kernel(out, (dst_cs, dst_rs), a, b, i0, i1 - i0, accumulate)
            };
        }
    };
    if parts == 1 {
        part(0);
    } else {
        (0..parts).into_par_iter().for_each(part);
    }
}

/// Each part runs on one thread: [`gemm_into`] splits a product over the pool itself.
const PARALLELISM: gemm_common::Parallelism = gemm_common::Parallelism::None;

/// Row alignment of the parts [`gemm_into`] splits a product into: the crate's widest AVX-512
/// microkernel is 64 rows high, so where the crate keeps this orientation no part ends in a narrow remainder
/// tile a whole one would cover. (A row-major destination it turns around: these rows become its columns,
/// tiled by 6, and the alignment is merely harmless.)
const SPLIT_ALIGN: usize = 64;

/// How many parts of `a`'s rows a pooled product is split into: one per thread, each multiplied by one
/// thread on its own rows of `a` (for a linear layer, its own rows of the weight). The crate's own
/// threading splits deep products (ViT-L fc2, k = 4096) unevenly: this split takes 8-16% less time at
/// ViT-L's fc2 and Swin-L's stage-3 fc2 (2 threads). Too few rows for every thread to get a whole tile: one
/// part.
fn split_parts(m: usize, threads: usize) -> usize {
    threads.min(m / SPLIT_ALIGN).max(1)
}

/// The destination's base pointer, shared by the parts of a split product (each writes its own rows).
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: the parts write disjoint elements (see `gemm_into`), so sending the pointer to other threads
// creates no data race; the borrow of `dst` outlives the parallel loop that uses it.
#[allow(unsafe_code)]
unsafe impl Send for DstPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for DstPtr {}

/// Rows `i0..i0 + rows` of `dst = a × b` (or `dst += ...`), one thread, element (i, j) at
/// `dst[i * dst_rs + j * dst_cs]`.
///
/// # Safety
/// `dst` must point to a buffer holding every element (i, j) of the whole `a.rows x b.cols` product under
/// those strides, not aliasing `a` or `b`, with no other thread touching rows `i0..i0 + rows`; `a` and
/// `b` must be in bounds (`MatRef::in_bounds`), `i0 + rows <= a.rows`.
#[allow(unsafe_code)]
unsafe fn kernel(
    dst: DstPtr,
    (dst_cs, dst_rs): (usize, usize),
    a: MatRef,
    b: MatRef,
    i0: usize,
    rows: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's contract: every element written, (i0 + r) * dst_rs + j * dst_cs for r < rows
    // and j < b.cols, lies in `dst`, and every element read, a's rows i0..i0 + rows and all of b, lies in
    // their slices.
    let (dst, lhs, rhs) = unsafe {
        (
            dst.0.add(i0 * dst_rs),
            a.data.as_ptr().add(i0 * a.row_stride),
            b.data.as_ptr(),
        )
    };
    let (dst_cs, dst_rs) = (dst_cs as isize, dst_rs as isize);
    let (lhs_cs, lhs_rs) = (a.col_stride as isize, a.row_stride as isize);
    let (rhs_cs, rhs_rs) = (b.col_stride as isize, b.row_stride as isize);
    // As `gemm::gemm` does: a row-oriented destination is computed as its transpose, bᵀ × aᵀ (the
    // micro-kernels write columns).
    #[rustfmt::skip]
    let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) = if dst_cs < dst_rs {
        (b.cols, rows, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs)
    } else {
        (rows, b.cols, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs)
    };
    let gemm = gemm_f32::gemm::f32::get_gemm_fn();
    // SAFETY: as above (the same elements, read and written through the transposed strides); the strides
    // are non-negative, which is all gemm-f32 asks beyond `gemm::gemm`'s contract.
    unsafe {
        gemm(
            m,
            n,
            a.cols,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            PARALLELISM,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    /// `dst0 + a × b` (or `a × b`) in f64.
    fn naive(a: &MatRef, b: &MatRef, dst0: &[f32], accumulate: bool) -> Vec<f64> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| {
                        a.data[i * a.row_stride + p * a.col_stride] as f64
                            * b.data[p * b.row_stride + j * b.col_stride] as f64
                    })
                    .sum();
                out[i * n + j] = s + if accumulate {
                    dst0[i * n + j] as f64
                } else {
                    0.0
                };
            }
        }
        out
    }

    /// Every layout the callers use and a few they do not, at awkward sizes (not multiples of any tile,
    /// k = 1, k deeper than a cache block), with and without accumulating, split into one part or several, against f64.
    #[test]
    fn matmul_matches_naive_across_shapes_layouts_and_modes() {
        let sizes = [
            (1, 1, 1),
            (1, 7, 1),
            (5, 1, 3),
            (12, 3, 32),
            (13, 17, 33),
            (11, 64, 15),
            (25, 40, 49),
            (49, 32, 49),
            (37, 300, 70),
            (100, 513, 197),
            (200, 9, 17),
        ];
        for &(m, k, n) in &sizes {
            let a = values(m * k * 3, 0.37);
            let b = values(n * k * 3, 0.11);
            // (A, B): weight x xT (linear with rows < out), row-major x row-major, transposed A, strided
            // column blocks of a wider buffer (attention's q, kT in the qkv rows).
            let layouts = [
                (MatRef::rows(&a, m, k), MatRef::transposed(&b, n, k)),
                (MatRef::rows(&a, m, k), MatRef::rows(&b, k, n)),
                (MatRef::transposed(&a, k, m), MatRef::transposed(&b, n, k)),
                (
                    MatRef {
                        data: &a[1..],
                        rows: m,
                        cols: k,
                        row_stride: 3 * k,
                        col_stride: 1,
                    },
                    MatRef {
                        data: &b[2..],
                        rows: k,
                        cols: n,
                        row_stride: 1,
                        col_stride: 3 * k,
                    },
                ),
            ];
            for (li, (av, bv)) in layouts.iter().enumerate() {
                for accumulate in [false, true] {
                    let dst0 = values(m * n, 0.53);
                    let mut dst = dst0.clone();
                    matmul(&mut dst, *av, *bv, accumulate);
                    let want = naive(av, bv, &dst0, accumulate);
                    for (idx, (g, w)) in dst.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                        assert!(
                            (*g as f64 - w).abs() < tol,
                            "{m}x{k}x{n} layout {li} acc {accumulate} at {idx}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_is_deterministic_across_thread_counts() {
        let (m, k, n) = (1000, 700, 197);
        let a = values(m * k, 0.37);
        let b = values(n * k, 0.11);
        let run = || {
            let mut d = vec![0.0f32; m * n];
            let (av, bv) = (MatRef::rows(&a, m, k), MatRef::transposed(&b, n, k));
            matmul(&mut d, av, bv, false);
            d
        };
        let first = run();
        for t in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap();
            assert!(pool.install(run) == first, "{t} threads");
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn refuses_views_past_the_slice() {
        let a = vec![0.0; 6];
        let bad = MatRef {
            data: &a,
            rows: 3,
            cols: 3,
            row_stride: 3,
            col_stride: 1,
        };
        let mut dst = vec![0.0; 6];
        matmul(&mut dst, bad, MatRef::rows(&a, 3, 2), false);
    }
}
