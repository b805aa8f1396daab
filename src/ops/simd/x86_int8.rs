//! The x86 kernels of [`crate::ops::int8`]: `u8 x s8` dot products into i32, with `vpdpbusd` where the CPU
//! has AVX512-VNNI, else with AVX2's `vpmaddwd` on the bytes widened to i16 (exact: AVX2's byte product
//! `vpmaddubsw` saturates its i16 pair sums, so it is not used). Their portable reference,
//! `int8::dot_portable`, computes the same integers (integer sums are exact in any order), which a test
//! there checks for each.

use std::arch::x86_64::*;

/// Output channels per register tile.
const OT: usize = 8;
/// Activation vectors (16 rows each) per register tile: 8 x 3 accumulators, 3 activation vectors and one
/// broadcast weight word fill 28 of the 32 registers.
const VT: usize = 3;

/// Whether the CPU has what [`dot`] needs.
pub(crate) fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// [`dot_vnni`] after checking the CPU and every length it needs (panics otherwise: a caller's bug).
pub(crate) fn dot(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
) {
    assert!(detected(), "dot_vnni on a CPU without AVX512-VNNI");
    super::check_int8_dot(w, nout, kq, act, rb, acc, ld);
    // SAFETY: the features and lengths `dot_vnni` requires were checked just above.
    unsafe { dot_vnni(w, nout, kq, act, rb, acc, ld) }
}

/// `acc[o * ld + r] = sum_k act[r, k] * w[o, k]` for `o < nout`, `r < 16 * rb`, with `act` in the packed
/// layout of `int8::Quantized` (`[rb][kq][16 rows][4 bytes]`) and `w` `nout` rows of `4 * kq` int8.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX512-VNNI; `w.len() >= nout * 4 * kq`,
/// `act.len() >= rb * kq * 64`, `acc.len() >= (nout - 1) * ld + 16 * rb` and `ld >= 16 * rb`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_vnni(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
) {
    let (wp, ap, cp) = (w.as_ptr(), act.as_ptr(), acc.as_mut_ptr());
    for o0 in (0..nout).step_by(OT) {
        let on = OT.min(nout - o0);
        for v0 in (0..rb).step_by(VT) {
            let vn = VT.min(rb - v0);
            // SAFETY: rows o0..o0 + on of w, vectors v0..v0 + vn of act and the matching acc elements lie
            // inside the lengths the caller guarantees.
            unsafe {
                let (w0, a0, c0) = (
                    wp.add(o0 * 4 * kq),
                    ap.add(v0 * kq * 64),
                    cp.add(o0 * ld + v0 * 16),
                );
                // The next tile's weight rows (contiguous after these) are asked for during the first pass
                // over these: they come from memory, these from L1 on the later passes.
                let pf = if v0 == 0 && o0 + OT < nout {
                    (w0.add(OT * 4 * kq), (nout - o0 - OT).min(OT) * 4 * kq / 64)
                } else {
                    (w0, 0)
                };
                match (on, vn) {
                    (OT, VT) => tile::<OT, VT>(w0, kq, a0, c0, ld, pf),
                    (OT, 2) => tile::<OT, 2>(w0, kq, a0, c0, ld, pf),
                    (OT, _) => tile::<OT, 1>(w0, kq, a0, c0, ld, pf),
                    _ => {
                        for o in 0..on {
                            let (wo, co) = (w0.add(o * 4 * kq), c0.add(o * ld));
                            let pf = (wo, 0);
                            match vn {
                                VT => tile::<1, VT>(wo, kq, a0, co, ld, pf),
                                2 => tile::<1, 2>(wo, kq, a0, co, ld, pf),
                                _ => tile::<1, 1>(wo, kq, a0, co, ld, pf),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One register tile: `O` output channels x `V` vectors of 16 rows, over all `kq` groups of 4 inputs,
/// prefetching the `lines` cache lines at `pf` into L1 meanwhile.
///
/// # Safety
/// As [`dot_vnni`], for the `O` weight rows at `w`, the `V` activation vectors at `a` and the tile at `c`;
/// `lines <= kq` and `pf .. pf + 64 lines` inside the weight.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const O: usize, const V: usize>(
    w: *const i8,
    kq: usize,
    a: *const u8,
    c: *mut i32,
    ld: usize,
    (pf, lines): (*const i8, usize),
) {
    let mut sum = [[_mm512_setzero_si512(); V]; O];
    for q in 0..kq {
        if q < lines {
            // SAFETY: q < lines, so the 64 bytes at pf + 64 q lie inside the weight rows (see `dot_vnni`);
            // a prefetch reads nothing into the program anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(pf.add(q * 64).cast()) };
        }
        let mut x = [_mm512_setzero_si512(); V];
        for (v, xv) in x.iter_mut().enumerate() {
            // SAFETY: vector v0 + v, group q of the packed activations (see `dot_vnni`).
            *xv = unsafe { _mm512_loadu_si512(a.add((v * kq + q) * 64) as *const _) };
        }
        for (o, so) in sum.iter_mut().enumerate() {
            // SAFETY: bytes 4q..4q + 4 of weight row o, inside the row of 4 * kq bytes.
            let b = _mm512_set1_epi32(unsafe {
                (w.add(o * 4 * kq + 4 * q) as *const i32).read_unaligned()
            });
            for (s, xv) in so.iter_mut().zip(&x) {
                *s = _mm512_dpbusd_epi32(*s, *xv, b);
            }
        }
    }
    for (o, so) in sum.iter().enumerate() {
        for (v, s) in so.iter().enumerate() {
            // SAFETY: element (o, 16 v .. 16 v + 16) of the tile, inside acc (see `dot_vnni`).
            unsafe { _mm512_storeu_si512(c.add(o * ld + v * 16) as *mut _, *s) };
        }
    }
}

/// Output channels per register tile of [`dot_avx2`]: 4 x 2 accumulators (16 rows in two halves), the
/// four i16 halves of the 16 rows' bytes and two broadcast weight pairs take 14 of the 16 registers.
const OT2: usize = 4;

/// Whether the CPU has what [`dot_avx2`] needs.
pub(crate) fn avx2_detected() -> bool {
    is_x86_feature_detected!("avx2")
}

/// [`dot`]'s integers with AVX2, for CPUs without AVX512-VNNI, after checking the CPU and every length
/// (panics otherwise: a caller's bug). Each tile's weight rows are first widened to i16 pairs in this
/// thread's scratch (`OT2` rows at a time, reused for every vector of rows).
pub(crate) fn dot_avx2(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
) {
    thread_local!(static WIDE: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) });
    assert!(avx2_detected(), "dot_avx2 on a CPU without AVX2");
    super::check_int8_dot(w, nout, kq, act, rb, acc, ld);
    WIDE.with_borrow_mut(|wide| {
        wide.resize(OT2 * 4 * kq, 0);
        // SAFETY: AVX2 and the lengths `dot_avx2_impl` requires were checked above; `wide` holds the
        // OT2 * 4 * kq i16 it needs.
        unsafe { dot_avx2_impl(w, nout, kq, act, rb, acc, ld, wide) }
    })
}

/// # Safety
/// As [`dot_vnni`], but for AVX2 instead of AVX-512; `wide.len() >= OT2 * 4 * kq`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_avx2_impl(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
    wide: &mut [i16],
) {
    let (wp, ap, cp) = (w.as_ptr(), act.as_ptr(), acc.as_mut_ptr());
    for o0 in (0..nout).step_by(OT2) {
        let on = OT2.min(nout - o0);
        // SAFETY: rows o0..o0 + on of w (on * 4 * kq bytes) lie inside w; wide holds them widened.
        unsafe { widen_pairs(wp.add(o0 * 4 * kq), on * kq, wide.as_mut_ptr()) };
        for v in 0..rb {
            // SAFETY: vector v of act and rows o0..o0 + on, 16 v.. of acc lie inside the checked lengths.
            unsafe {
                let (a0, c0) = (ap.add(v * kq * 64), cp.add(o0 * ld + v * 16));
                match on {
                    OT2 => tile_avx2::<OT2>(wide.as_ptr(), kq, a0, c0, ld),
                    3 => tile_avx2::<3>(wide.as_ptr(), kq, a0, c0, ld),
                    2 => tile_avx2::<2>(wide.as_ptr(), kq, a0, c0, ld),
                    _ => tile_avx2::<1>(wide.as_ptr(), kq, a0, c0, ld),
                }
            }
        }
    }
}

/// Widens `groups` groups of four int8 weights at `w` to i16, each group reordered `w0 w2 w1 w3`: the
/// pair that multiplies a row's even bytes (0 and 2), then the pair for its odd bytes (1 and 3).
///
/// # Safety
/// AVX2; `w` readable for `4 groups` bytes, `dst` writable for `4 groups` i16.
#[target_feature(enable = "avx2")]
unsafe fn widen_pairs(w: *const i8, groups: usize, dst: *mut i16) {
    // Within each 128-bit lane: i16 elements 0 2 1 3 and 4 6 5 7 (as byte indices).
    let order = _mm256_setr_epi8(
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, 0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13,
        10, 11, 14, 15,
    );
    let mut g = 0;
    while g + 4 <= groups {
        // SAFETY: groups g..g + 4: 16 bytes of w, 16 i16 of dst.
        unsafe {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(4 * g) as *const _));
            _mm256_storeu_si256(dst.add(4 * g) as *mut _, _mm256_shuffle_epi8(x, order));
        }
        g += 4;
    }
    for g in g..groups {
        for (j, k) in [0, 2, 1, 3].into_iter().enumerate() {
            // SAFETY: element k of group g < groups.
            unsafe { *dst.add(4 * g + j) = *w.add(4 * g + k) as i16 };
        }
    }
}

/// One register tile of [`dot_avx2_impl`]: `O` output channels x one vector of 16 rows (two halves of 8),
/// over all `kq` groups of 4 inputs. A row's 4 bytes are split into its even bytes (0, 2) and odd bytes
/// (1, 3) as i16 pairs, each multiplied with the matching weight pair and summed by `vpmaddwd`.
///
/// # Safety
/// AVX2; `wide` holds the `O` channels' widened groups (`[O][kq][4]` i16), `a` the vector's `kq * 64`
/// bytes, `c` the tile's `O` rows of 16 i32 at stride `ld`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile_avx2<const O: usize>(
    wide: *const i16,
    kq: usize,
    a: *const u8,
    c: *mut i32,
    ld: usize,
) {
    let mut sum = [[_mm256_setzero_si256(); 2]; O];
    let low = _mm256_set1_epi16(0xff);
    for q in 0..kq {
        let mut even = [_mm256_setzero_si256(); 2];
        let mut odd = [_mm256_setzero_si256(); 2];
        for h in 0..2 {
            // SAFETY: half h of group q of the vector (see the function's contract).
            let x = unsafe { _mm256_loadu_si256(a.add(q * 64 + h * 32) as *const _) };
            even[h] = _mm256_and_si256(x, low);
            odd[h] = _mm256_srli_epi16::<8>(x);
        }
        for (o, so) in sum.iter_mut().enumerate() {
            // SAFETY: group q of channel o in wide: i16 pairs (w0, w2) and (w1, w3).
            let (pe, po) = unsafe {
                let p = wide.add((o * kq + q) * 4) as *const i32;
                (
                    _mm256_set1_epi32(p.read_unaligned()),
                    _mm256_set1_epi32(p.add(1).read_unaligned()),
                )
            };
            for h in 0..2 {
                let t = _mm256_add_epi32(
                    _mm256_madd_epi16(even[h], pe),
                    _mm256_madd_epi16(odd[h], po),
                );
                so[h] = _mm256_add_epi32(so[h], t);
            }
        }
    }
    for (o, so) in sum.iter().enumerate() {
        for (h, s) in so.iter().enumerate() {
            // SAFETY: element (o, 8 h .. 8 h + 8) of the tile, inside acc.
            unsafe { _mm256_storeu_si256(c.add(o * ld + h * 8) as *mut _, *s) };
        }
    }
}

/// Quantizes the `x.len() / inp` (at most 16) rows of `x` `[n, inp]` into one packed activation vector
/// (`data` `[inp / 4][16 rows][4 bytes]`), each row's scale and zero point into `scale` and `zero`: the same
/// bytes and parameters as `int8::quantize`'s portable loop (one pass for the range, one for the bytes,
/// instead of three reductions, a scalar rounding loop and a scatter of 4-byte groups).
pub(crate) fn quantize_rows(
    x: &[f32],
    inp: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    assert!(detected(), "quantize_rows on a CPU without AVX-512");
    check_rows(x, inp, data, zero, scale);
    // SAFETY: the features and lengths `quantize_rows_avx512` requires were checked just above.
    unsafe { quantize_rows_avx512(x, inp, data, zero, scale) }
}

/// The lengths the row quantizers need (panics otherwise: a caller's bug): at most 16 rows of `inp` inputs
/// (a multiple of 4) in `x`, room for their bytes, zero points and scales.
fn check_rows(x: &[f32], inp: usize, data: &[u8], zero: &[i32], scale: &[f32]) {
    let n = x.len() / inp.max(1);
    assert!(
        inp.is_multiple_of(4)
            && x.len() == n * inp
            && n <= 16
            && data.len() >= inp * 16
            && zero.len() >= n
            && scale.len() >= n,
        "quantize_rows shapes"
    );
}

/// The lengths the column quantizers need (panics otherwise): `xt` `[inp, rows]` with `inp` a multiple of 4,
/// `r0 < rows`, room for 16 rows' bytes, zero points and scales.
fn check_cols(xt: &[f32], rows: usize, r0: usize, data: &[u8], zero: &[i32], scale: &[f32]) {
    let inp = xt.len() / rows.max(1);
    assert!(
        r0 < rows
            && xt.len() == inp * rows
            && inp.is_multiple_of(4)
            && data.len() >= inp * 16
            && zero.len() >= 16
            && scale.len() >= 16,
        "quantize_cols shapes"
    );
}

/// The first `n` rows' scales and zero points from their ranges (`int8::range_params`), and the
/// reciprocal scales and zero points as f32 lanes for the quantizing pass.
fn row_params(
    (lo, hi, fin): (&[f32; 16], &[f32; 16], &[f32; 16]),
    n: usize,
    zero: &mut [i32],
    scale: &mut [f32],
) -> ([f32; 16], [f32; 16]) {
    let (mut inv, mut zf) = ([0.0f32; 16], [0.0f32; 16]);
    for l in 0..n {
        let (s, i, z) = crate::ops::int8::range_params(lo[l], hi[l], fin[l] == 0.0);
        (scale[l], inv[l], zero[l], zf[l]) = (s, i, z, z as f32);
    }
    (inv, zf)
}

/// `q = clamp(round_ties_even(v * inv) + zero, 0, 255)` per lane, as i32: `int8::quant`'s operations in
/// its order (a NaN lane gives 0, as `NaN as u8` does).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn quant16(v: __m512, inv: __m512, zero: __m512) -> __m512i {
    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(v, inv),
    );
    let t = _mm512_add_ps(t, zero);
    // vmaxps returns its second operand when the first is NaN: 0.
    let t = _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(255.0));
    _mm512_cvttps_epi32(t)
}

/// # Safety
/// As [`quantize_rows`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn quantize_rows_avx512(
    x: &[f32],
    inp: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    let dp = data.as_mut_ptr();
    let tail = inp % 16;
    let tmask: __mmask16 = ((1u32 << tail) - 1) as u16;
    for (l, xr) in x.chunks_exact(inp).enumerate() {
        let p = xr.as_ptr();
        let (mut lo, mut hi, mut fin) = (
            _mm512_set1_ps(f32::INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
            _mm512_setzero_ps(),
        );
        let mut k = 0;
        while k < inp {
            let m = if k + 16 <= inp { !0 } else { tmask };
            // SAFETY: the lanes in m are elements k.. < inp of the row.
            let v = unsafe { _mm512_maskz_loadu_ps(m, p.add(k)) };
            lo = _mm512_mask_min_ps(lo, m, lo, v);
            hi = _mm512_mask_max_ps(hi, m, hi, v);
            fin = _mm512_mask_add_ps(fin, m, fin, _mm512_mul_ps(v, _mm512_setzero_ps()));
            k += 16;
        }
        let (s, inv, z) = crate::ops::int8::range_params(
            _mm512_reduce_min_ps(lo),
            _mm512_reduce_max_ps(hi),
            _mm512_reduce_add_ps(fin) == 0.0,
        );
        (scale[l], zero[l]) = (s, z);
        let (vinv, vz) = (_mm512_set1_ps(inv), _mm512_set1_ps(z as f32));
        let mut k = 0;
        while k < inp {
            let m = if k + 16 <= inp { !0 } else { tmask };
            // SAFETY: as in the first pass.
            let v = unsafe { _mm512_maskz_loadu_ps(m, p.add(k)) };
            let b = _mm512_cvtepi32_epi8(quant16(v, vinv, vz));
            let groups = (inp - k).min(16) / 4;
            let lanes = [
                _mm_extract_epi32::<0>(b),
                _mm_extract_epi32::<1>(b),
                _mm_extract_epi32::<2>(b),
                _mm_extract_epi32::<3>(b),
            ];
            for (g, &four) in lanes.iter().enumerate().take(groups) {
                // SAFETY: group k / 4 + g < inp / 4 of row l: byte (k / 4 + g) * 64 + 4 l, 4 bytes, inside
                // data's inp * 16.
                unsafe { (dp.add((k / 4 + g) * 64 + l * 4) as *mut i32).write_unaligned(four) };
            }
            k += 16;
        }
    }
}

/// Quantizes rows `r0..r0 + n` (`n <= 16`) of the activation given transposed, `xt` `[inp, rows]`, into one
/// packed vector as [`quantize_rows`] does (the same bytes as `int8::quantize_t`'s portable loop): a column's
/// 16 rows are one register, so the four inputs of a group become each row's 4 bytes by shifts.
pub(crate) fn quantize_cols(
    xt: &[f32],
    rows: usize,
    r0: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    assert!(detected(), "quantize_cols on a CPU without AVX-512");
    check_cols(xt, rows, r0, data, zero, scale);
    // SAFETY: the features and lengths `quantize_cols_avx512` requires were checked just above.
    unsafe { quantize_cols_avx512(xt, rows, r0, data, zero, scale) }
}

/// # Safety
/// As [`quantize_cols`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn quantize_cols_avx512(
    xt: &[f32],
    rows: usize,
    r0: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    let inp = xt.len() / rows;
    let n = 16.min(rows - r0);
    let m: __mmask16 = ((1u32 << n) - 1) as u16;
    // SAFETY (every load below): lanes in m are rows r0..r0 + n < rows of one column k < inp of xt.
    let p = unsafe { xt.as_ptr().add(r0) };
    let (mut lo, mut hi, mut fin) = (
        _mm512_set1_ps(f32::INFINITY),
        _mm512_set1_ps(f32::NEG_INFINITY),
        _mm512_setzero_ps(),
    );
    for k in 0..inp {
        let v = unsafe { _mm512_maskz_loadu_ps(m, p.add(k * rows)) };
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
        fin = _mm512_add_ps(fin, _mm512_mul_ps(v, _mm512_setzero_ps()));
    }
    let (mut lo_a, mut hi_a, mut fin_a) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    // SAFETY: each array is 16 f32, what one unaligned 512-bit store writes.
    unsafe {
        _mm512_storeu_ps(lo_a.as_mut_ptr(), lo);
        _mm512_storeu_ps(hi_a.as_mut_ptr(), hi);
        _mm512_storeu_ps(fin_a.as_mut_ptr(), fin);
    }
    let (inv, zf) = row_params((&lo_a, &hi_a, &fin_a), n, zero, scale);
    // SAFETY: each array is 16 f32, what one unaligned 512-bit load reads.
    let (vinv, vz) = unsafe { (_mm512_loadu_ps(inv.as_ptr()), _mm512_loadu_ps(zf.as_ptr())) };
    let dp = data.as_mut_ptr();
    for q in 0..inp / 4 {
        let mut four = _mm512_setzero_si512();
        for j in 0..4 {
            let v = unsafe { _mm512_maskz_loadu_ps(m, p.add((4 * q + j) * rows)) };
            let b = _mm512_sllv_epi32(quant16(v, vinv, vz), _mm512_set1_epi32(8 * j as i32));
            four = _mm512_or_si512(four, b);
        }
        // SAFETY: bytes q * 64.. + 64 of data (q < inp / 4); rows past n stay as they were (zero).
        unsafe { _mm512_mask_storeu_epi32(dp.add(q * 64) as *mut i32, m, four) };
    }
}

/// [`quant16`] on 8 lanes, for the AVX2 quantizers: the same operations in the same order.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn quant8(v: __m256, inv: __m256, zero: __m256) -> __m256i {
    let t =
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, inv));
    let t = _mm256_add_ps(t, zero);
    // vmaxps returns its second operand when the first is NaN: 0.
    let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(255.0));
    _mm256_cvttps_epi32(t)
}

/// [`quantize_rows`] with AVX2 (CPUs without AVX-512): the same bytes and parameters.
pub(crate) fn quantize_rows_avx2(
    x: &[f32],
    inp: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    assert!(avx2_detected(), "quantize_rows_avx2 on a CPU without AVX2");
    check_rows(x, inp, data, zero, scale);
    // SAFETY: the features and lengths `quantize_rows_avx2_impl` requires were checked just above.
    unsafe { quantize_rows_avx2_impl(x, inp, data, zero, scale) }
}

/// # Safety
/// As [`quantize_rows_avx2`] checks.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_rows_avx2_impl(
    x: &[f32],
    inp: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    let dp = data.as_mut_ptr();
    let whole = inp / 8 * 8;
    for (l, xr) in x.chunks_exact(inp).enumerate() {
        let p = xr.as_ptr();
        let (mut lo, mut hi, mut fin) = (
            _mm256_set1_ps(f32::INFINITY),
            _mm256_set1_ps(f32::NEG_INFINITY),
            _mm256_setzero_ps(),
        );
        for k in (0..whole).step_by(8) {
            // SAFETY: elements k..k + 8 <= inp of the row.
            let v = unsafe { _mm256_loadu_ps(p.add(k)) };
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
            fin = _mm256_add_ps(fin, _mm256_mul_ps(v, _mm256_setzero_ps()));
        }
        let (mut lo_a, mut hi_a, mut fin_a) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
        // SAFETY: each array is 8 f32, what one unaligned 256-bit store writes.
        unsafe {
            _mm256_storeu_ps(lo_a.as_mut_ptr(), lo);
            _mm256_storeu_ps(hi_a.as_mut_ptr(), hi);
            _mm256_storeu_ps(fin_a.as_mut_ptr(), fin);
        }
        let tail = &xr[whole..];
        let lo = lo_a
            .iter()
            .chain(tail)
            .fold(f32::INFINITY, |a, &b| a.min(b));
        let hi = hi_a
            .iter()
            .chain(tail)
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let fin = fin_a.iter().sum::<f32>() + tail.iter().map(|v| v * 0.0).sum::<f32>();
        let (s, inv, z) = crate::ops::int8::range_params(lo, hi, fin == 0.0);
        (scale[l], zero[l]) = (s, z);
        let (vinv, vz) = (_mm256_set1_ps(inv), _mm256_set1_ps(z as f32));
        let mut k = 0;
        while k < inp {
            // Eight inputs, or the last four (inp is a multiple of 4).
            let v = if k + 8 <= inp {
                // SAFETY: elements k..k + 8 <= inp of the row.
                unsafe { _mm256_loadu_ps(p.add(k)) }
            } else {
                // SAFETY: elements k..k + 4 = inp of the row.
                _mm256_castps128_ps256(unsafe { _mm_loadu_ps(p.add(k)) })
            };
            let q = quant8(v, vinv, vz);
            // Per 128-bit half: its four i32 (0..=255) become its low four bytes.
            let b = _mm256_packus_epi16(_mm256_packus_epi32(q, q), _mm256_setzero_si256());
            let groups = [_mm256_extract_epi32::<0>(b), _mm256_extract_epi32::<4>(b)];
            for (g, &four) in groups.iter().enumerate().take((inp - k).min(8) / 4) {
                // SAFETY: group k / 4 + g < inp / 4 of row l: byte (k / 4 + g) * 64 + 4 l, 4 bytes, inside
                // data's inp * 16.
                unsafe { (dp.add((k / 4 + g) * 64 + l * 4) as *mut i32).write_unaligned(four) };
            }
            k += 8;
        }
    }
}

/// [`quantize_cols`] with AVX2 (CPUs without AVX-512): the same bytes and parameters, the 16 rows of a column
/// as two registers.
pub(crate) fn quantize_cols_avx2(
    xt: &[f32],
    rows: usize,
    r0: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    assert!(avx2_detected(), "quantize_cols_avx2 on a CPU without AVX2");
    check_cols(xt, rows, r0, data, zero, scale);
    // SAFETY: the features and lengths `quantize_cols_avx2_impl` requires were checked just above.
    unsafe { quantize_cols_avx2_impl(xt, rows, r0, data, zero, scale) }
}

/// # Safety
/// As [`quantize_cols_avx2`] checks.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_cols_avx2_impl(
    xt: &[f32],
    rows: usize,
    r0: usize,
    data: &mut [u8],
    zero: &mut [i32],
    scale: &mut [f32],
) {
    let inp = xt.len() / rows;
    let n = 16.min(rows - r0);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Lanes of rows r0 + h * 8 + i < r0 + n, for the halves h = 0, 1.
    let mask = [
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32 - 8), lane),
    ];
    // A masked lane is neither read nor written, but its address may lie past the slice: wrapping pointer
    // arithmetic, and the unmasked lanes are rows r0..r0 + n < rows of a column k < inp of xt.
    let p = xt.as_ptr().wrapping_add(r0);
    let load = |k: usize, h: usize| unsafe {
        _mm256_maskload_ps(p.wrapping_add(k * rows + 8 * h), mask[h])
    };
    let mut lo = [_mm256_set1_ps(f32::INFINITY); 2];
    let mut hi = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    let mut fin = [_mm256_setzero_ps(); 2];
    for k in 0..inp {
        for h in 0..2 {
            let v = load(k, h);
            lo[h] = _mm256_min_ps(lo[h], v);
            hi[h] = _mm256_max_ps(hi[h], v);
            fin[h] = _mm256_add_ps(fin[h], _mm256_mul_ps(v, _mm256_setzero_ps()));
        }
    }
    let (mut lo_a, mut hi_a, mut fin_a) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    // SAFETY: each array is 16 f32, two unaligned 256-bit stores of 8.
    unsafe {
        for h in 0..2 {
            _mm256_storeu_ps(lo_a.as_mut_ptr().add(8 * h), lo[h]);
            _mm256_storeu_ps(hi_a.as_mut_ptr().add(8 * h), hi[h]);
            _mm256_storeu_ps(fin_a.as_mut_ptr().add(8 * h), fin[h]);
        }
    }
    let (inv, zf) = row_params((&lo_a, &hi_a, &fin_a), n, zero, scale);
    // SAFETY: each array is 16 f32, two unaligned 256-bit loads of 8.
    let (vinv, vz) = unsafe {
        (
            [
                _mm256_loadu_ps(inv.as_ptr()),
                _mm256_loadu_ps(inv.as_ptr().add(8)),
            ],
            [
                _mm256_loadu_ps(zf.as_ptr()),
                _mm256_loadu_ps(zf.as_ptr().add(8)),
            ],
        )
    };
    let dp = data.as_mut_ptr();
    for q in 0..inp / 4 {
        for h in 0..2 {
            let mut four = _mm256_setzero_si256();
            for j in 0..4 {
                let b = quant8(load(4 * q + j, h), vinv[h], vz[h]);
                four = _mm256_or_si256(four, _mm256_sllv_epi32(b, _mm256_set1_epi32(8 * j as i32)));
            }
            // SAFETY: bytes q * 64 + 32 h.. + 32 of data (q < inp / 4); rows past n stay as they were (zero).
            unsafe { _mm256_maskstore_epi32(dp.add(q * 64 + 32 * h) as *mut i32, mask[h], four) };
        }
    }
}

/// Output channels `o0..o0 + n` of a linear layer's `[rows, out]` result from their i32 sums, transposed
/// on the way: `y[j][i] = (acc[i * ld + j] - zero[j] * colsum[i]) as f32 * (sx[j] * sw[i]) + bias[i]`
/// for `i < n = colsum.len() <= 16`, `j < rows`: `int8`'s epilogue and the bias-adding transpose after it,
/// their operations in their order, so the same values, in one pass from registers.
pub(crate) struct Dequant<'a> {
    /// `[n, ld]`: channel i's sums for rows `0..rows` at `i * ld`.
    pub acc: &'a [i32],
    pub ld: usize,
    pub rows: usize,
    /// Per channel (`n` each).
    pub colsum: &'a [i32],
    pub sw: &'a [f32],
    pub bias: &'a [f32],
    /// Per row (`rows` each, at least).
    pub zero: &'a [i32],
    pub sx: &'a [f32],
}

/// A `[rows, out]` result from int8 sums, in parallel groups of `group` output channels: `task(o0, n, put)`
/// computes channels `o0..o0 + n` and hands them to `put` once, which scales them back and writes them,
/// transposed, into their columns of the result (see [`Dequant`]).
pub(crate) fn dequant_groups(
    rows: usize,
    out: usize,
    group: usize,
    task: impl Fn(usize, usize, &mut dyn FnMut(&Dequant)) + Sync,
) -> Vec<f32> {
    let each = |o0: usize, n: usize, dst: &super::Columns| {
        let mut done = false;
        task(o0, n, &mut |d: &Dequant| {
            assert!(
                !done && d.rows == rows && d.colsum.len() == n,
                "int8 sums of channels {o0}..{} written twice or of another shape",
                o0 + n
            );
            // SAFETY: element j * out + o0 + i of the result for j < rows, i < n: this task's own columns,
            // inside the result's out * rows elements (o0 + n <= out).
            unsafe { dequant_transpose(d, dst.at(o0), out) };
            done = true;
        });
        assert!(done, "int8 sums of channels {o0}.. never written");
    };
    // SAFETY: every task wrote every row of its channels' columns (the asserts above), and nothing else.
    unsafe { super::column_groups(rows, out, group, each) }
}

/// Writes [`Dequant`]'s values into channel columns starting at `y` (row j's at `y + j * out`).
///
/// # Safety
/// `y` must be valid for writes of element `j * out + i` for `j < d.rows`, `i < d.colsum.len()`, no other
/// thread accessing those.
unsafe fn dequant_transpose(d: &Dequant, y: *mut f32, out: usize) {
    let n = d.colsum.len();
    assert!(detected(), "dequant_transpose on a CPU without AVX-512");
    assert!(
        n <= 16
            && n <= out
            && d.sw.len() == n
            && d.bias.len() == n
            && d.ld >= d.rows
            && (n == 0 || d.acc.len() >= (n - 1) * d.ld + d.rows)
            && d.zero.len() >= d.rows
            && d.sx.len() >= d.rows,
        "dequant_transpose shapes"
    );
    // SAFETY: the features and the lengths are checked above, the writes are the caller's.
    unsafe { dequant_transpose_avx512(d, y, out) }
}

/// # Safety
/// As [`dequant_transpose`] checks and requires.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dequant_transpose_avx512(d: &Dequant, y: *mut f32, out: usize) {
    let n = d.colsum.len();
    let nmask: __mmask16 = ((1u32 << n) - 1) as u16;
    // SAFETY (every load and store below): lanes outside the masks are not accessed; the accessed ones are
    // channels i < n and rows j < rows of the checked slices, and their elements of y.
    let (cs, sw, b) = unsafe {
        (
            _mm512_maskz_loadu_epi32(nmask, d.colsum.as_ptr()),
            _mm512_maskz_loadu_ps(nmask, d.sw.as_ptr()),
            _mm512_maskz_loadu_ps(nmask, d.bias.as_ptr()),
        )
    };
    for j0 in (0..d.rows).step_by(16) {
        let h = 16.min(d.rows - j0);
        let hmask: __mmask16 = ((1u32 << h) - 1) as u16;
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, ri) in r.iter_mut().enumerate().take(n) {
            let s = unsafe { _mm512_maskz_loadu_epi32(hmask, d.acc.as_ptr().add(i * d.ld + j0)) };
            *ri = _mm512_castsi512_ps(s);
        }
        let t = super::x86::transpose16(&r);
        for (j, tj) in t.iter().enumerate().take(h) {
            let s = _mm512_castps_si512(*tj);
            let v = _mm512_sub_epi32(s, _mm512_mullo_epi32(_mm512_set1_epi32(d.zero[j0 + j]), cs));
            let f = _mm512_mul_ps(
                _mm512_cvtepi32_ps(v),
                _mm512_mul_ps(_mm512_set1_ps(d.sx[j0 + j]), sw),
            );
            unsafe { _mm512_mask_storeu_ps(y.add((j0 + j) * out), nmask, _mm512_add_ps(f, b)) };
        }
    }
}
