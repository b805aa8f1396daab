//! What the kernel benches and `tools/gemm_shapes.rs` share (a folder without `main.rs`, so cargo does not
//! take it for a bench of its own).

/// The products that dominate the three Large models at batch 1, plus ViT-L's qkv at batch 8, as
/// `(name, M, K, N)` for `A [M, K] × B [K, N]`: `A` is the weight `[out, in]` and `B = xᵀ`, as `linear`
/// multiplies when rows < out, or, in the `_rows` cases, `A = x [rows, in]` and `B = wᵀ`.
pub const GEMM_SHAPES: [(&str, usize, usize, usize); 12] = [
    ("vitl_qkv", 3072, 1024, 197),
    ("vitl_proj", 1024, 1024, 197),
    ("vitl_fc1", 4096, 1024, 197),
    ("vitl_fc2", 1024, 4096, 197),
    ("s2_fc1", 3072, 768, 196),
    ("s2_fc2", 768, 3072, 196),
    ("s3_fc1", 6144, 1536, 49),
    ("s3_fc2", 1536, 6144, 49),
    ("s1_fc1", 1536, 384, 784),
    ("s1_fc2_rows", 784, 1536, 384),
    ("s0_fc1_rows", 3136, 192, 768),
    ("vitl_b8_qkv", 3072, 1024, 1576),
];
