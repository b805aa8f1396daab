//! Element-wise ops on activations: residual adds (with a layer scale, with a bias) and mean pooling. Each
//! element's arithmetic is fixed, so however rayon splits the rows the results are the same bits.

use rayon::prelude::*;

use super::{rows_per_task, ELEMS_PER_TASK};

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(ELEMS_PER_TASK)
        .zip(y.par_chunks(ELEMS_PER_TASK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `x += gamma * y` per row of `gamma.len()` channels (gamma absent: `x += y`): a residual with an
/// optional layer scale.
pub fn add_scaled(x: &mut [f32], y: &[f32], gamma: Option<&[f32]>) {
    let dim = gamma.map_or(y.len().max(1), |g| g.len());
    x.par_chunks_mut(dim)
        .zip(y.par_chunks(dim))
        .for_each(|(xr, yr)| match gamma {
            Some(g) => xr
                .iter_mut()
                .zip(yr)
                .zip(g)
                .for_each(|((a, b), g)| *a += g * b),
            None => xr.iter_mut().zip(yr).for_each(|(a, b)| *a += b),
        });
}

/// `x += gamma * (y + bias)` per row of `bias.len()` channels (gamma absent: `x += y + bias`), one pass: a
/// residual that also applies the last layer's bias.
pub fn add_bias_scaled(x: &mut [f32], y: &[f32], bias: &[f32], gamma: Option<&[f32]>) {
    let c = bias.len();
    let chunk = c * rows_per_task(c);
    x.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk))
        .for_each(|(xc, yc)| {
            for (xr, yr) in xc.chunks_exact_mut(c).zip(yc.chunks_exact(c)) {
                match gamma {
                    Some(g) => {
                        for (((a, v), bb), g) in xr.iter_mut().zip(yr).zip(bias).zip(g) {
                            *a += g * (v + bb);
                        }
                    }
                    None => {
                        for ((a, v), bb) in xr.iter_mut().zip(yr).zip(bias) {
                            *a += v + bb;
                        }
                    }
                }
            }
        });
}

/// The mean of each batch item's `rows` rows of `dim` values, leaving out its first `skip` rows (ViT's class
/// token): `[batch, rows, dim]` -> `[batch, dim]`. Rows are summed in order, then divided.
pub fn mean_pool(x: &[f32], (batch, rows, dim): (usize, usize, usize), skip: usize) -> Vec<f32> {
    let mut pooled = vec![0.0f32; batch * dim];
    let n = (rows - skip) as f32;
    for (dst, item) in pooled
        .chunks_exact_mut(dim.max(1))
        .zip(x.chunks_exact((rows * dim).max(1)))
    {
        for row in item.chunks_exact(dim).skip(skip) {
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        }
        dst.iter_mut().for_each(|d| *d /= n);
    }
    pooled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        add_assign(&mut x, &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(x, [2.0, 3.0, 4.0, 5.0]);
        add_scaled(&mut x, &[1.0, 1.0, 2.0, 2.0], Some(&[0.5, 2.0]));
        assert_eq!(x, [2.5, 5.0, 5.0, 9.0]);
        add_scaled(&mut x, &[1.0, 1.0, 1.0, 1.0], None);
        assert_eq!(x, [3.5, 6.0, 6.0, 10.0]);
        add_bias_scaled(
            &mut x,
            &[1.0, 1.0, 1.0, 1.0],
            &[1.0, 0.0],
            Some(&[1.0, 2.0]),
        );
        assert_eq!(x, [5.5, 8.0, 8.0, 12.0]);
        add_bias_scaled(&mut x, &[0.0; 4], &[1.0, -1.0], None);
        assert_eq!(x, [6.5, 7.0, 9.0, 11.0]);
    }

    #[test]
    fn mean_pool_skips_leading_rows() {
        // 2 items of 3 rows of 2.
        let x = [9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 5.0, 6.0, 7.0, 10.0];
        assert_eq!(mean_pool(&x, (2, 3, 2), 1), [2.0, 3.0, 6.0, 8.0]);
        assert_eq!(
            mean_pool(&x, (2, 3, 2), 0),
            [13.0 / 3.0, 5.0, 4.0, 16.0 / 3.0]
        );
    }
}
