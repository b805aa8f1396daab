//! The x86 half of `ops::bf16`: the `vdpbf16ps` product tiles (AVX512_BF16) and the transpose that packs an
//! activation for them; on CPUs with AVX2 and FMA but not AVX512_BF16, tiles that take the same steps with
//! FMAs on the bf16 halves widened to f32 (a shift or a mask: a bf16 is the top half of an f32), and a
//! portable transpose. The portable reference, the blocking and the dispatch live in `ops/bf16.rs`; the
//! entry points here are safe (they check the CPU and every bound) so that module needs no `unsafe`.
//!
//! A tile multiplies `NR` weight rows (output channels, read in place from the file's `[out, in]` bf16
//! rows, one pair of inputs broadcast at a time) with `MV` vectors of 16 tokens of the packed activation
//! (`[in / 2, ld]` u32, each the bf16 pair of one token's inputs `2p, 2p + 1`). Each `vdpbf16ps` adds to an
//! f32 accumulator the odd product, rounds, then the even one, rounds: the order the reference follows.

use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Output channels per tile: 12 x 2 vectors of accumulators leave registers for the two activation
/// vectors and the broadcast weight pair.
pub(crate) const NR: usize = 12;
/// Token vectors (16 tokens each) per tile.
const MV: usize = 2;

/// Whether this CPU runs `vdpbf16ps` (AVX512_BF16) along with the AVX-512 the tiles use.
fn avx512() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// Whether this CPU has one of the two kernels: `vdpbf16ps`, or AVX2 with FMA.
pub(crate) fn detected() -> bool {
    avx512() || (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// `c[i * rows + m] (+)= Σ_p w[(n0 + i) * k + 2p..][..2] · xp[p * ld + m][..2]` for channels `i < nr`
/// (`nr <= NR`), tokens `m < rows` and pairs `p` in `p0..p0 + pc`: one block of a product `yᵀ = w × xᵀ`
/// over the slab of channels `n0..n0 + nr`, written to (or with `accumulate`, added to) `c`, the slab's
/// rows `[nr, rows]`.
///
/// # Panics
/// If the CPU lacks AVX512_BF16 or a bound does not hold.
#[allow(clippy::too_many_arguments)]
pub(crate) fn slab(
    w: &[u16],
    k: usize,
    (n0, nr): (usize, usize),
    (p0, pc): (usize, usize),
    xp: &[u32],
    ld: usize,
    rows: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(
        detected(),
        "bf16 tile run on a CPU without AVX512_BF16 or AVX2"
    );
    super::check_bf16_slab(w, k, (n0, nr), (p0, pc), xp, ld, rows, c, (NR, 16));
    if !avx512() {
        return slab_avx2(w, k, (n0, nr), (p0, pc), xp, ld, rows, c, accumulate);
    }
    let last = rows % 16;
    let mask_last: __mmask16 = if last == 0 {
        0xFFFF
    } else {
        (1u16 << last) - 1
    };
    let vectors = rows.div_ceil(16);
    // SAFETY: the CPU has the features the tiles are compiled for (checked above). Tile (m0, mv) reads
    // weight elements (n0 + i) * k + 2p + {0, 1} < (n0 + nr) * k, packed elements p * ld + m0 + 0..16 * mv
    // < (p0 + pc) * ld (m0 + 16 * mv <= ld), and reads/writes c[i * rows + m] only for m < rows (the last
    // vector of a tile reaching past `rows` is masked), all within the lengths asserted above.
    unsafe {
        let w = w.as_ptr().add(n0 * k + 2 * p0);
        let x = xp.as_ptr().add(p0 * ld);
        let mut v0 = 0;
        while v0 < vectors {
            let mv = MV.min(vectors - v0);
            let mask = if v0 + mv == vectors {
                mask_last
            } else {
                0xFFFF
            };
            let cp = c.as_mut_ptr().add(16 * v0);
            let xv = x.add(16 * v0);
            let args = (w, k, xv, ld, pc, cp, rows, mask, accumulate);
            match (nr, mv) {
                (12, 2) => tile::<12, 2>(args),
                (12, _) => tile::<12, 1>(args),
                (11, 2) => tile::<11, 2>(args),
                (11, _) => tile::<11, 1>(args),
                (10, 2) => tile::<10, 2>(args),
                (10, _) => tile::<10, 1>(args),
                (9, 2) => tile::<9, 2>(args),
                (9, _) => tile::<9, 1>(args),
                (8, 2) => tile::<8, 2>(args),
                (8, _) => tile::<8, 1>(args),
                (7, 2) => tile::<7, 2>(args),
                (7, _) => tile::<7, 1>(args),
                (6, 2) => tile::<6, 2>(args),
                (6, _) => tile::<6, 1>(args),
                (5, 2) => tile::<5, 2>(args),
                (5, _) => tile::<5, 1>(args),
                (4, 2) => tile::<4, 2>(args),
                (4, _) => tile::<4, 1>(args),
                (3, 2) => tile::<3, 2>(args),
                (3, _) => tile::<3, 1>(args),
                (2, 2) => tile::<2, 2>(args),
                (2, _) => tile::<2, 1>(args),
                (_, 2) => tile::<1, 2>(args),
                (_, _) => tile::<1, 1>(args),
            }
            v0 += mv;
        }
    }
}

/// Weight rows, k, packed activation (at the tile's first token), ld, pairs, output, its row stride, the
/// mask of the tile's last vector, accumulate.
type TileArgs = (
    *const u16,
    usize,
    *const u32,
    usize,
    usize,
    *mut f32,
    usize,
    __mmask16,
    bool,
);

/// `NR` channels x `MV` token vectors over `pc` pairs, accumulators in registers.
///
/// # Safety
/// The CPU must have AVX-512F/BW and AVX512_BF16; row `i < R` of `w` holds `2 * pc` readable elements at
/// `i * k`, `x` holds `MV * 16` readable u32 at `p * ld` for `p < pc`, and `c` holds `MV * 16` elements at
/// `i * ldc` for `i < R`, the last vector's only where `mask` is set.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const R: usize, const V: usize>(
    (w, k, x, ld, pc, c, ldc, mask, accumulate): TileArgs,
) {
    let lane_mask = |v: usize| if v + 1 == V { mask } else { 0xFFFF };
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                // SAFETY: within c's rows, masked past the end (the caller's contract).
                *a = unsafe { _mm512_maskz_loadu_ps(lane_mask(v), c.add(i * ldc + 16 * v)) };
            }
        }
    }
    for p in 0..pc {
        let mut xs = [_mm512_setzero_si512(); V];
        for (v, xv) in xs.iter_mut().enumerate() {
            // SAFETY: pair p's 16 * V tokens lie in x (the caller's contract).
            *xv = unsafe { _mm512_loadu_si512(x.add(p * ld + 16 * v) as *const _) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: elements 2p, 2p + 1 of weight row i lie in w; unaligned 4-byte read.
            let pair = unsafe { (w.add(i * k + 2 * p) as *const i32).read_unaligned() };
            // SAFETY (transmutes): __m512i and __m512bh are both 64 bytes of plain bits.
            let b: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
            for (a, xv) in row.iter_mut().zip(&xs) {
                *a = _mm512_dpbf16_ps(*a, b, unsafe {
                    std::mem::transmute::<__m512i, __m512bh>(*xv)
                });
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm512_mask_storeu_ps(c.add(i * ldc + 16 * v), lane_mask(v), *a) };
        }
    }
}

/// [`slab`] with AVX2 and FMA. A tile is up to [`R2`] channels x two vectors of 8 tokens; each pair step
/// adds the odd product, then the even one, as `vdpbf16ps` does (a product of two bf16 is exact in f32,
/// so the FMA rounds once, where the instruction rounds: the same sums; unlike the instruction, denormals
/// are kept, as the reference keeps them).
#[allow(clippy::too_many_arguments)]
fn slab_avx2(
    w: &[u16],
    k: usize,
    (n0, nr): (usize, usize),
    (p0, pc): (usize, usize),
    xp: &[u32],
    ld: usize,
    rows: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    let last = rows % 8;
    let vectors = rows.div_ceil(8);
    // SAFETY: the CPU has AVX2 and FMA (`detected` without `avx512`), and `slab` checked the bounds: tile
    // (i0, v0) reads weight elements (n0 + i) * k + 2p + {0, 1} for i < nr, packed elements p * ld + 8 v0 +
    // 0..16 < (p0 + pc) * ld (ld is a multiple of 16 covering rows), and reads/writes c[i * rows + m] only
    // for m < rows (the vector reaching past `rows` is masked).
    unsafe {
        let w = w.as_ptr().add(n0 * k + 2 * p0);
        let x = xp.as_ptr().add(p0 * ld);
        for i0 in (0..nr).step_by(R2) {
            let r = R2.min(nr - i0);
            let mut v0 = 0;
            while v0 < vectors {
                let mv = 2.min(vectors - v0);
                let n = if v0 + mv == vectors && last != 0 {
                    last
                } else {
                    8
                };
                let args = (
                    w.add(i0 * k),
                    k,
                    x.add(8 * v0),
                    ld,
                    pc,
                    c.as_mut_ptr().add(i0 * rows + 8 * v0),
                    rows,
                    n,
                    accumulate,
                );
                match (r, mv) {
                    (4, 2) => tile_avx2::<4, 2>(args),
                    (4, _) => tile_avx2::<4, 1>(args),
                    (3, 2) => tile_avx2::<3, 2>(args),
                    (3, _) => tile_avx2::<3, 1>(args),
                    (2, 2) => tile_avx2::<2, 2>(args),
                    (2, _) => tile_avx2::<2, 1>(args),
                    (_, 2) => tile_avx2::<1, 2>(args),
                    (_, _) => tile_avx2::<1, 1>(args),
                }
                v0 += mv;
            }
        }
    }
}

/// Channels per AVX2 tile: 4 x 2 accumulators, the two vectors' odd and even halves and a weight pair's
/// two halves take 14 of the 16 registers.
const R2: usize = 4;

/// As [`TileArgs`], with the count of tokens (1..=8) the tile's last vector holds instead of a mask.
type TileArgs2 = (
    *const u16,
    usize,
    *const u32,
    usize,
    usize,
    *mut f32,
    usize,
    usize,
    bool,
);

/// `R` channels x `V` vectors of 8 tokens over `pc` pairs, accumulators in registers.
///
/// # Safety
/// AVX2 and FMA; as [`tile`], with the last vector's first `n` tokens in `c` instead of a mask.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const V: usize>(
    (w, k, x, ld, pc, c, ldc, n, accumulate): TileArgs2,
) {
    let full = _mm256_set1_epi32(-1);
    let part = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let mut masks = [full; V];
    masks[V - 1] = part;
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                // SAFETY: within c's rows, masked past the end (the caller's contract).
                *a = unsafe { _mm256_maskload_ps(c.add(i * ldc + 8 * v), masks[v]) };
            }
        }
    }
    for p in 0..pc {
        let mut odd = [_mm256_setzero_ps(); V];
        let mut even = [_mm256_setzero_ps(); V];
        for v in 0..V {
            // SAFETY: pair p's 8 * V tokens lie in x (the caller's contract).
            let xv = unsafe { _mm256_loadu_si256(x.add(p * ld + 8 * v) as *const _) };
            odd[v] = _mm256_castsi256_ps(_mm256_and_si256(xv, high));
            even[v] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(xv));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: elements 2p, 2p + 1 of weight row i lie in w; unaligned 4-byte read.
            let pair = unsafe { (w.add(i * k + 2 * p) as *const i32).read_unaligned() };
            let b = _mm256_set1_epi32(pair);
            let (wo, we) = (
                _mm256_castsi256_ps(_mm256_and_si256(b, high)),
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(b)),
            );
            for v in 0..V {
                row[v] = _mm256_fmadd_ps(wo, odd[v], row[v]);
                row[v] = _mm256_fmadd_ps(we, even[v], row[v]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm256_maskstore_ps(c.add(i * ldc + 8 * v), masks[v], *a) };
        }
    }
}

/// `dst[p * ld + m] = src[m * pairs + p]` for `m < rows`, `p < pairs`: a `[rows, pairs]` u32 matrix (an
/// activation's bf16 rows, two inputs per u32) transposed into the packed `[pairs, ld]` form, in 16x16
/// register tiles. Lanes `rows..ld` of `dst` are left as they are.
///
/// # Panics
/// If the CPU lacks AVX-512F or a bound does not hold.
pub(crate) fn transpose_pairs(src: &[u32], rows: usize, pairs: usize, dst: &mut [u32], ld: usize) {
    assert!(src.len() >= rows * pairs, "transpose source");
    assert!(
        ld >= rows && dst.len() >= pairs * ld,
        "transpose destination"
    );
    if !avx512() {
        for (m, row) in src.chunks_exact(pairs.max(1)).take(rows).enumerate() {
            for (p, &v) in row.iter().enumerate() {
                dst[p * ld + m] = v;
            }
        }
        return;
    }
    // SAFETY: the CPU has AVX-512F; every access below is masked to rows m < rows and pairs p < pairs,
    // inside the lengths asserted above.
    unsafe { transpose_pairs_avx512(src, rows, pairs, dst, ld) }
}

/// # Safety
/// See [`transpose_pairs`]: AVX-512F, and the asserted lengths.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs_avx512(
    src: &[u32],
    rows: usize,
    pairs: usize,
    dst: &mut [u32],
    ld: usize,
) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mask = |n: usize| -> __mmask16 { (1u32 << n.min(16)).wrapping_sub(1) as u16 };
    for m0 in (0..rows).step_by(16) {
        let h = 16.min(rows - m0);
        for p0 in (0..pairs).step_by(16) {
            let wd = 16.min(pairs - p0);
            // Loaded as f32 lanes: x86::transpose16 only moves 32-bit lanes, so the pairs keep their bits.
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate().take(h) {
                // SAFETY: row m0 + i < rows, pairs p0..p0 + wd <= pairs.
                *ri = unsafe {
                    _mm512_maskz_loadu_ps(mask(wd), s.add((m0 + i) * pairs + p0) as *const f32)
                };
            }
            let t = super::x86::transpose16(&r);
            for (j, col) in t.iter().enumerate().take(wd) {
                // SAFETY: pair p0 + j < pairs, tokens m0..m0 + h <= rows <= ld.
                unsafe {
                    _mm512_mask_storeu_ps(d.add((p0 + j) * ld + m0) as *mut f32, mask(h), *col)
                };
            }
        }
    }
}
