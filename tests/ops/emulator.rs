//! The CUDA emulator's own tests (kernels/emu/selftest.cu): the CUDA features the kernels rely on
//! give what a GPU gives — shared memory and barriers, grids and blocks in three dimensions,
//! dynamic shared memory, shuffles of every kind, votes, masks of half warps, atomics — and what a
//! GPU leaves undefined is caught and named: an access past an allocation (read: guard page;
//! write: canary), a barrier a thread never reaches, a collective that cannot complete, a lane
//! that does not exist, a stack overflow, arguments that do not match the kernel, and a race
//! between threads that only the reverse or random order of a barrier interval shows.

use dydiff::backend::cuda::emu::{set_thread_order, Emulator, ThreadOrder};
use dydiff::backend::cuda::gpu::{DevicePtr, Gpu, KernelArg, LaunchShape};

fn upload_f32(g: &Emulator, v: &[f32]) -> DevicePtr {
    let p = g.alloc(v.len() * 4).unwrap();
    g.copy_to_device(p, bytemuck::cast_slice(v)).unwrap();
    p
}

fn upload_i32(g: &Emulator, v: &[i32]) -> DevicePtr {
    let p = g.alloc(v.len() * 4).unwrap();
    g.copy_to_device(p, bytemuck::cast_slice(v)).unwrap();
    p
}

fn download_f32(g: &Emulator, p: DevicePtr, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    g.copy_from_device(p, bytemuck::cast_slice_mut(&mut v))
        .unwrap();
    v
}

fn download_i32(g: &Emulator, p: DevicePtr, n: usize) -> Vec<i32> {
    let mut v = vec![0i32; n];
    g.copy_from_device(p, bytemuck::cast_slice_mut(&mut v))
        .unwrap();
    v
}

fn shape(grid: [u32; 3], block: [u32; 3], shared_bytes: u32) -> LaunchShape {
    LaunchShape {
        grid,
        block,
        shared_bytes,
    }
}

fn error_of(r: dydiff::Result<()>) -> String {
    match r {
        Ok(()) => panic!("the launch succeeded; expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shared_memory_and_barriers_give_a_tree_sum_at_every_block_size() {
    let g = Emulator::default();
    for block in [1u32, 2, 32, 64, 256, 1024] {
        let blocks = 3u32;
        let n = (block * blocks) as usize;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32).collect();
        let (px, po) = (upload_f32(&g, &x), g.alloc(blocks as usize * 4).unwrap());
        g.launch(
            "emu_test_block_sum",
            shape([blocks, 1, 1], [block, 1, 1], 0),
            &[KernelArg::Ptr(px), KernelArg::Ptr(po)],
        )
        .unwrap();
        let got = download_f32(&g, po, blocks as usize);
        for (b, s) in got.iter().enumerate() {
            let want: f32 = x[b * block as usize..(b + 1) * block as usize].iter().sum();
            assert_eq!(*s, want, "block size {block}, block {b}");
        }
        g.free(px).unwrap();
        g.free(po).unwrap();
    }
}

#[test]
fn shuffles_and_ballots_match_their_definitions() {
    let g = Emulator::default();
    let n = 256usize;
    let x: Vec<f32> = (0..n)
        .map(|i| if i % 3 == 0 { -1.0 } else { i as f32 })
        .collect();
    let (px, po) = (upload_f32(&g, &x), g.alloc(4 * (n / 32) * 4).unwrap());
    g.launch(
        "emu_test_warp",
        shape([2, 1, 1], [128, 1, 1], 0),
        &[KernelArg::Ptr(px), KernelArg::Ptr(po)],
    )
    .unwrap();
    let got = download_f32(&g, po, 4 * (n / 32));
    for w in 0..n / 32 {
        let lanes = &x[32 * w..32 * w + 32];
        let sum: f32 = lanes.iter().sum();
        assert_eq!(got[4 * w], sum, "warp {w}: xor butterfly");
        assert_eq!(got[4 * w + 1], sum, "warp {w}: shuffle down");
        let bits: u32 = (0..32).filter(|&l| lanes[l] > 0.0).map(|l| 1u32 << l).sum();
        let want = (bits & 0xffff) as f32 + 65536.0 * (bits >> 16) as f32;
        assert_eq!(got[4 * w + 2], want, "warp {w}: ballot");
        assert_eq!(got[4 * w + 3], lanes[w % 32], "warp {w}: broadcast");
    }
}

#[test]
fn masks_of_half_warps_collect_only_their_lanes() {
    let g = Emulator::default();
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let (px, po) = (upload_f32(&g, &x), g.alloc(64 * 4).unwrap());
    g.launch(
        "emu_test_half_warps",
        shape([1, 1, 1], [64, 1, 1], 0),
        &[KernelArg::Ptr(px), KernelArg::Ptr(po)],
    )
    .unwrap();
    let got = download_f32(&g, po, 64);
    for (i, v) in got.iter().enumerate() {
        let h = i / 16;
        let want: f32 = x[16 * h..16 * h + 16].iter().sum();
        assert_eq!(*v, want, "thread {i}");
    }
}

#[test]
fn three_dimensional_grids_and_dynamic_shared_memory() {
    let g = Emulator::default();
    let (grid, block) = ([2u32, 3, 2], [3u32, 2, 5]);
    let per = (block[0] * block[1] * block[2]) as usize;
    let blocks = (grid[0] * grid[1] * grid[2]) as usize;
    let po = g.alloc(per * blocks * 4).unwrap();
    g.launch(
        "emu_test_indices",
        shape(grid, block, (per * 4) as u32),
        &[KernelArg::Ptr(po)],
    )
    .unwrap();
    let got = download_i32(&g, po, per * blocks);
    for bz in 0..grid[2] {
        for by in 0..grid[1] {
            for bx in 0..grid[0] {
                for tz in 0..block[2] {
                    for ty in 0..block[1] {
                        for tx in 0..block[0] {
                            let b = (bx + grid[0] * (by + grid[1] * bz)) as usize;
                            let t = (tx + block[0] * (ty + block[1] * tz)) as usize;
                            let want = (tx + 10 * ty + 100 * tz) + 1000 * (bx + 10 * by + 100 * bz);
                            assert_eq!(got[b * per + t], want as i32, "block {b} thread {t}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn atomics_count_every_update() {
    let g = Emulator::default();
    let n = 1000usize;
    let x: Vec<i32> = (0..n as i32).map(|i| (i * 37) % 101).collect();
    let (px, pc) = (upload_i32(&g, &x), upload_i32(&g, &[0; 7]));
    g.launch(
        "emu_test_histogram",
        LaunchShape::linear(n, 128),
        &[
            KernelArg::Ptr(px),
            KernelArg::I32(n as i32),
            KernelArg::I32(7),
            KernelArg::Ptr(pc),
        ],
    )
    .unwrap();
    let got = download_i32(&g, pc, 7);
    let mut want = [0i32; 7];
    for v in &x {
        want[(*v % 7) as usize] += 1;
    }
    assert_eq!(got, want);
}

#[test]
fn a_read_past_the_end_is_caught_and_named() {
    let g = Emulator::default();
    let n = 256usize;
    let (px, po) = (upload_f32(&g, &vec![1.0; n]), g.alloc(n * 4).unwrap());
    let e = error_of(g.launch(
        "emu_test_read_past_end",
        LaunchShape::linear(n, 128),
        &[
            KernelArg::Ptr(px),
            KernelArg::I32(n as i32),
            KernelArg::Ptr(po),
        ],
    ));
    assert!(
        e.contains("kernel emu_test_read_past_end")
            && e.contains("block (1, 0, 0) thread (127, 0, 0)")
            && e.contains("byte 1024 of an allocation of 1024 bytes (past its end)"),
        "{e}"
    );
    // the emulator goes on after a fault, and the same kernel in bounds succeeds
    let n2 = n - 1;
    g.launch(
        "emu_test_read_past_end",
        LaunchShape::linear(n2, 128),
        &[
            KernelArg::Ptr(px),
            KernelArg::I32(n2 as i32),
            KernelArg::Ptr(po),
        ],
    )
    .unwrap();
}

#[test]
fn a_write_past_the_end_is_caught_even_inside_the_alignment_slack() {
    let g = Emulator::default();
    for n in [5usize, 8] {
        let po = g.alloc(n * 4).unwrap();
        let e = error_of(g.launch(
            "emu_test_write_past_end",
            LaunchShape::linear(n, 32),
            &[KernelArg::Ptr(po), KernelArg::I32(n as i32)],
        ));
        assert!(
            e.contains("emu_test_write_past_end")
                && e.contains(&format!("allocation of {} bytes", 4 * n))
                && e.contains("past its end"),
            "{e}"
        );
    }
}

/// A planted race — thread t reads what thread t − 1 wrote to shared memory with no barrier
/// between — passes in index order and is caught in reverse and random order (the read finds the
/// poisoned NaN): the orders CI runs the kernel tests in.
#[test]
fn a_race_between_threads_shows_in_reverse_and_random_order() {
    let g = Emulator::default();
    let n = 128usize;
    let run = |order: ThreadOrder| {
        set_thread_order(order);
        let po = g.alloc(n * 4).unwrap();
        g.launch(
            "emu_test_unsynced_neighbour",
            shape([1, 1, 1], [n as u32, 1, 1], (n * 4) as u32),
            &[KernelArg::Ptr(po)],
        )
        .unwrap();
        set_thread_order(ThreadOrder::FromEnvironment);
        download_f32(&g, po, n)
    };
    let want: Vec<f32> = (0..n).map(|t| t as f32 - 1.0).collect();
    assert_eq!(run(ThreadOrder::Index), want, "index order hides the race");
    // where no order is set, DYDIFF_EMU_ORDER's applies (CI runs this test under each)
    let env = std::env::var("DYDIFF_EMU_ORDER").unwrap_or_default();
    let from_env = run(ThreadOrder::FromEnvironment);
    if env == "reverse" || env.starts_with("random") {
        assert_ne!(from_env, want, "DYDIFF_EMU_ORDER={env} is not applied");
    } else {
        assert_eq!(from_env, want);
    }
    for order in [ThreadOrder::Reverse, ThreadOrder::Random(7)] {
        let got = run(order);
        let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert!(wrong > n / 4, "{order:?}: only {wrong} of {n} reads differ");
    }
}

#[test]
fn a_barrier_not_every_thread_reaches_is_reported() {
    let g = Emulator::default();
    let po = g.alloc(128 * 4).unwrap();
    let e = error_of(g.launch(
        "emu_test_early_exit",
        shape([1, 1, 1], [128, 1, 1], 0),
        &[KernelArg::Ptr(po)],
    ));
    assert!(
        e.contains("127 of 128 threads wait at __syncthreads while 1 have exited"),
        "{e}"
    );
}

#[test]
fn a_collective_that_cannot_complete_is_a_deadlock_not_a_hang() {
    let g = Emulator::default();
    let po = g.alloc(64 * 4).unwrap();
    let e = error_of(g.launch(
        "emu_test_divergent_shuffle",
        shape([1, 1, 1], [64, 1, 1], 0),
        &[KernelArg::Ptr(po)],
    ));
    assert!(
        e.contains("deadlock") && e.contains("__shfl_xor_sync with mask 0xffffffff"),
        "{e}"
    );
}

#[test]
fn a_full_mask_in_a_partial_warp_is_reported() {
    let g = Emulator::default();
    let (px, po) = (upload_f32(&g, &[1.0; 48]), g.alloc(16 * 4).unwrap());
    let e = error_of(g.launch(
        "emu_test_warp",
        shape([1, 1, 1], [48, 1, 1], 0),
        &[KernelArg::Ptr(px), KernelArg::Ptr(po)],
    ));
    assert!(
        e.contains("which does not exist (the block has 48 threads)"),
        "{e}"
    );
}

#[test]
fn a_stack_overflow_is_reported() {
    let g = Emulator::default();
    let po = g.alloc(4).unwrap();
    let e = error_of(g.launch(
        "emu_test_stack_overflow",
        shape([1, 1, 1], [1, 1, 1], 0),
        &[KernelArg::Ptr(po)],
    ));
    assert!(e.contains("stack overflow"), "{e}");
}

#[test]
fn arguments_that_do_not_match_the_kernel_are_refused() {
    let g = Emulator::default();
    let p = g.alloc(64 * 4).unwrap();
    let s = shape([1, 1, 1], [64, 1, 1], 0);
    let e = error_of(g.launch("emu_test_half_warps", s, &[KernelArg::Ptr(p)]));
    assert!(e.contains("takes 2 arguments, the launch passed 1"), "{e}");
    let e = error_of(g.launch(
        "emu_test_half_warps",
        s,
        &[KernelArg::Ptr(p), KernelArg::I32(0)],
    ));
    assert!(
        e.contains("argument 1 is 8 bytes, the launch passed 4 bytes"),
        "{e}"
    );
    let e = error_of(g.launch("no_such_kernel", s, &[]));
    assert!(e.contains("no kernel named no_such_kernel"), "{e}");
    let e = error_of(g.launch(
        "emu_test_block_sum",
        shape([1, 1, 1], [2048, 1, 1], 0),
        &[KernelArg::Ptr(p), KernelArg::Ptr(p)],
    ));
    assert!(e.contains("invalid launch"), "{e}");
    assert!(g.has_kernel("emu_test_block_sum") && !g.has_kernel("no_such_kernel"));
    assert!(g.free(DevicePtr(8)).is_err());
}

#[test]
fn launches_from_several_threads_at_once() {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                let g = Emulator::default();
                let x: Vec<f32> = (0..256).map(|i| (i + t) as f32).collect();
                let (px, po) = (upload_f32(&g, &x), g.alloc(2 * 4).unwrap());
                for _ in 0..20 {
                    g.launch(
                        "emu_test_block_sum",
                        shape([2, 1, 1], [128, 1, 1], 0),
                        &[KernelArg::Ptr(px), KernelArg::Ptr(po)],
                    )
                    .unwrap();
                    let got = download_f32(&g, po, 2);
                    assert_eq!(got[0], x[..128].iter().sum::<f32>());
                    assert_eq!(got[1], x[128..].iter().sum::<f32>());
                }
            });
        }
    });
}

/// The value a tensor core reads from a TF32 operand register: the upper 19 bits.
fn tf32_truncated(x: f32) -> f64 {
    f64::from(f32::from_bits(x.to_bits() & 0xffff_e000))
}

/// cvt.rna.tf32.f32: to nearest, ties away from zero, at 10 mantissa bits.
fn tf32_rounded(x: f32) -> f64 {
    f64::from(f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000))
}

fn upload_u16(g: &Emulator, v: &[u16]) -> DevicePtr {
    let p = g.alloc(v.len() * 2).unwrap();
    g.copy_to_device(p, bytemuck::cast_slice(v)).unwrap();
    p
}

/// Values with many mantissa bits (so that operand rounding shows), some negative.
fn awkward(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(40_503);
            (h % 20_011) as f32 / 7_919.0 - 1.2 + (h % 7) as f32 * 1.000_123
        })
        .collect()
}

#[test]
fn the_tf32_mma_is_the_matrix_product_of_its_operands_element_by_element() {
    let g = Emulator::default();
    let (a, b, c) = (awkward(128, 1), awkward(64, 2), awkward(128, 3));
    let (pa, pb, pc, pd) = (
        upload_f32(&g, &a),
        upload_f32(&g, &b),
        upload_f32(&g, &c),
        g.alloc(128 * 4).unwrap(),
    );
    for round in [0, 1] {
        g.launch(
            "emu_test_mma_tf32",
            shape([1, 1, 1], [32, 1, 1], 0),
            &[
                KernelArg::Ptr(pa),
                KernelArg::Ptr(pb),
                KernelArg::Ptr(pc),
                KernelArg::Ptr(pd),
                KernelArg::I32(round),
            ],
        )
        .unwrap();
        let d = download_f32(&g, pd, 128);
        let op = if round == 1 {
            tf32_rounded
        } else {
            tf32_truncated
        };
        for i in 0..16 {
            for j in 0..8 {
                let want: f64 = f64::from(c[i * 8 + j])
                    + (0..8)
                        .map(|k| op(a[i * 8 + k]) * op(b[k * 8 + j]))
                        .sum::<f64>();
                let got = f64::from(d[i * 8 + j]);
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "rounded {round}: D[{i}][{j}] = {got}, expected {want}"
                );
            }
        }
        // the operands' rounding matters: the product of unrounded operands differs
        let exact: f64 = f64::from(c[0])
            + (0..8)
                .map(|k| f64::from(a[k]) * f64::from(b[k * 8]))
                .sum::<f64>();
        assert!(
            (f64::from(d[0]) - exact).abs() > 1e-7,
            "D[0][0] shows no TF32 rounding"
        );
    }
}

#[test]
fn the_bf16_mma_is_the_matrix_product_element_by_element() {
    let g = Emulator::default();
    let to_bf16 = |v: Vec<f32>| -> Vec<u16> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let (a, b, c) = (
        to_bf16(awkward(256, 4)),
        to_bf16(awkward(128, 5)),
        awkward(128, 6),
    );
    let (pa, pb, pc, pd) = (
        upload_u16(&g, &a),
        upload_u16(&g, &b),
        upload_f32(&g, &c),
        g.alloc(128 * 4).unwrap(),
    );
    g.launch(
        "emu_test_mma_bf16",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(pc),
            KernelArg::Ptr(pd),
        ],
    )
    .unwrap();
    let d = download_f32(&g, pd, 128);
    let v = |x: u16| f64::from(half::bf16::from_bits(x).to_f32());
    for i in 0..16 {
        for j in 0..8 {
            let want = f64::from(c[i * 8 + j])
                + (0..16)
                    .map(|k| v(a[i * 16 + k]) * v(b[k * 8 + j]))
                    .sum::<f64>();
            let got = f64::from(d[i * 8 + j]);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "D[{i}][{j}] = {got}, expected {want}"
            );
        }
    }
}

#[test]
fn ldmatrix_fragments_feed_the_mma_a_matrix_product() {
    let g = Emulator::default();
    let to_bf16 = |v: Vec<f32>| -> Vec<u16> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let (a, b) = (to_bf16(awkward(256, 7)), to_bf16(awkward(256, 8)));
    let (pa, pb, pd) = (
        upload_u16(&g, &a),
        upload_u16(&g, &b),
        g.alloc(256 * 4).unwrap(),
    );
    g.launch(
        "emu_test_ldmatrix_mma",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[KernelArg::Ptr(pa), KernelArg::Ptr(pb), KernelArg::Ptr(pd)],
    )
    .unwrap();
    let d = download_f32(&g, pd, 256);
    let v = |x: u16| f64::from(half::bf16::from_bits(x).to_f32());
    for i in 0..16 {
        for j in 0..16 {
            let want: f64 = (0..16).map(|k| v(a[i * 16 + k]) * v(b[k * 16 + j])).sum();
            let got = f64::from(d[i * 16 + j]);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "D[{i}][{j}] = {got}, expected {want}"
            );
        }
    }
    let e = error_of(g.launch(
        "emu_test_ldmatrix_misaligned",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[KernelArg::Ptr(pd)],
    ));
    assert!(
        e.contains("ldmatrix: a row address is not 16-byte aligned"),
        "{e}"
    );
}

#[test]
fn misaligned_vector_accesses_are_refused() {
    let g = Emulator::default();
    let src: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let (pi, po) = (upload_f32(&g, &src), g.alloc(128 * 4).unwrap());
    g.launch(
        "emu_test_vector_access",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[KernelArg::Ptr(pi), KernelArg::Ptr(po), KernelArg::I32(0)],
    )
    .unwrap();
    assert_eq!(download_f32(&g, po, 128), src);
    let e = error_of(g.launch(
        "emu_test_vector_access",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[KernelArg::Ptr(pi), KernelArg::Ptr(po), KernelArg::I32(1)],
    ));
    assert!(
        e.contains("emu_test_vector_access")
            && e.contains("a 16-byte vector access is not 16-byte aligned"),
        "{e}"
    );
}

#[test]
fn cp_async_copies_arrive_when_their_group_is_waited_for() {
    let g = Emulator::default();
    let src: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let (ps, po) = (upload_f32(&g, &src), g.alloc(32 * 3 * 8 * 4).unwrap());
    for tail in [16u32, 8] {
        g.launch(
            "emu_test_cp_async",
            shape([1, 1, 1], [32, 1, 1], 1024),
            &[KernelArg::Ptr(ps), KernelArg::Ptr(po), KernelArg::U32(tail)],
        )
        .unwrap();
        let out = download_f32(&g, po, 32 * 3 * 8);
        for lane in 0..32 {
            let stage = |s: usize| &out[(3 * lane + s) * 8..][..8];
            assert!(
                stage(0).iter().all(|v| v.is_nan()),
                "lane {lane}: data before any wait"
            );
            assert_eq!(
                stage(1)[..4],
                src[8 * lane..][..4],
                "lane {lane}: group 0 after wait_group 1"
            );
            assert!(
                stage(1)[4..].iter().all(|v| v.is_nan()),
                "lane {lane}: group 1 early"
            );
            let kept = tail as usize / 4;
            for j in 0..8 {
                let want = if j < 4 + kept { src[8 * lane + j] } else { 0.0 };
                assert_eq!(
                    stage(2)[j],
                    want,
                    "lane {lane}, float {j}, {tail} source bytes"
                );
            }
        }
    }
}

/// Static shared memory has dynamic shared memory's checks: a block reads NaN where none of its
/// threads wrote (a planted fault: only block 0 fills the tile), a write past the end is caught
/// in the rounding slack and on the guard page, and more than a block may declare is refused.
#[test]
fn static_shared_memory_is_poisoned_bounded_and_limited() {
    let g = Emulator::default();
    let out = g.alloc(3 * 256 * 4).unwrap();
    g.launch(
        "emu_test_static_shared_unwritten",
        shape([3, 1, 1], [256, 1, 1], 0),
        &[KernelArg::Ptr(out)],
    )
    .unwrap();
    let got = download_f32(&g, out, 3 * 256);
    for t in 0..256 {
        assert_eq!(got[t], t as f32, "block 0 wrote its tile");
        assert!(got[256 + t].is_nan() && got[512 + t].is_nan(), "[{t}]");
    }

    g.launch(
        "emu_test_static_shared_past_end",
        shape([2, 1, 1], [32, 1, 1], 0),
        &[KernelArg::I32(2), KernelArg::Ptr(out)],
    )
    .unwrap();
    assert_eq!(download_f32(&g, out, 3), [1.0, 1.0, 2.0]);
    let slack = error_of(g.launch(
        "emu_test_static_shared_past_end",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[KernelArg::I32(3), KernelArg::Ptr(out)],
    ));
    assert!(
        slack.contains("emu_test_static_shared_past_end")
            && slack.contains("past the end of its static shared memory (12 bytes)"),
        "{slack}"
    );
    let guard = error_of(g.launch(
        "emu_test_static_shared_past_end",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[KernelArg::I32(4), KernelArg::Ptr(out)],
    ));
    assert!(
        guard.contains("block (0, 0, 0) thread (0, 0, 0)") && guard.contains("invalid access"),
        "{guard}"
    );

    let e = error_of(g.launch(
        "emu_test_static_shared_too_much",
        shape([1, 1, 1], [32, 1, 1], 0),
        &[KernelArg::Ptr(out)],
    ));
    assert!(
        e.contains("53248 bytes of static shared memory") && e.contains("49152 static"),
        "{e}"
    );
}

/// The emulator refuses what the GPU refuses at launch, from the kernel's launch bounds and its
/// machine code's resource figures (build.rs): a planted block of 128 threads for a kernel bounded
/// to 64; and a block of 1 024 threads of a kernel of over 64 registers per thread — where nvcc
/// built the kernels and the registers are known (CI's `--features cuda` build, where this test
/// insists on it).
#[test]
fn launches_beyond_a_kernels_resources_are_refused() {
    let g = Emulator::default();
    let out = g.alloc(1024 * 4).unwrap();
    let bounded = g.resources("emu_test_bounded").unwrap();
    assert_eq!(bounded.max_threads, 64);
    g.launch(
        "emu_test_bounded",
        shape([2, 1, 1], [64, 1, 1], 0),
        &[KernelArg::Ptr(out)],
    )
    .unwrap();
    let e = error_of(g.launch(
        "emu_test_bounded",
        shape([1, 1, 1], [128, 1, 1], 0),
        &[KernelArg::Ptr(out)],
    ));
    assert!(
        e.contains("a block of 128 threads, more than its __launch_bounds__ allow (64)"),
        "{e}"
    );

    let hungry = g.resources("emu_test_many_registers").unwrap();
    if hungry.registers == 0 {
        // known exactly where nvcc built the kernels (CI's `--features cuda` build)
        assert!(
            dydiff::backend::cuda::kernels::FATBIN.is_empty(),
            "the kernels were built with nvcc but the emulator knows no registers (build.rs could \
             not run cuobjdump beside nvcc: see its warning)"
        );
        return;
    }
    assert!(hungry.registers > 64, "{hungry:?}");
    let input = upload_f32(&g, &vec![0.5; 128]);
    let args = [
        KernelArg::Ptr(input),
        KernelArg::Ptr(out),
        KernelArg::I32(2),
    ];
    g.launch(
        "emu_test_many_registers",
        shape([1, 1, 1], [256, 1, 1], 0),
        &args,
    )
    .unwrap();
    let e = error_of(g.launch(
        "emu_test_many_registers",
        shape([1, 1, 1], [1024, 1, 1], 0),
        &args,
    ));
    assert!(
        e.contains("too many resources requested for launch")
            && e.contains(&format!(
                "{} registers per thread × 1024 threads",
                hungry.registers
            )),
        "{e}"
    );
    // the network's kernels carry their figures too
    let gemm = g.resources("gemm_tf32").unwrap();
    assert_eq!(gemm.max_threads, 128);
    assert!(gemm.registers > 0, "{gemm:?}");
}

/// A launch asking for more shared memory than the device gives a block is refused: the
/// emulator of a device with 99 KiB (sm_86, sm_89) refuses 100 KiB of dynamic shared memory that
/// an H100's 227 KiB hold.
#[test]
fn shared_memory_beyond_the_devices_limit_is_refused() {
    let (grid, block) = ([1u32, 1, 1], [4u32, 1, 1]);
    let bytes = 100 * 1024;
    let run = |g: &Emulator| {
        let po = g.alloc(16).unwrap();
        g.launch(
            "emu_test_indices",
            shape(grid, block, bytes),
            &[KernelArg::Ptr(po)],
        )
    };
    run(&Emulator::default()).unwrap();
    let small = Emulator::with_max_shared(99 * 1024);
    assert_eq!(small.max_shared_per_block(), 99 * 1024);
    let e = error_of(run(&small));
    assert!(
        e.contains("emu_test_indices") && e.contains("102400 shared bytes"),
        "{e}"
    );
}
