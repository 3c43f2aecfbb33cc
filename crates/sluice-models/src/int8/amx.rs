//! The AMX-INT8 kernel, on its own because it differs from the SIMD ones in kind: tiles driven
//! with inline assembly (Rust's AMX intrinsics are not stable yet), a per-thread tile
//! configuration and a permission the process must ask Linux for.
//!
//! Up to 32 activation rows × 32 channels per call, as 2 × 2 tiles of 16 × 16 `i32` (tmm0-3),
//! activation tiles in tmm4-5 and weight tiles in tmm6-7.

use std::arch::asm;
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
use std::cell::Cell;
use std::sync::OnceLock;

/// Weight tiles fetched ahead of the one being multiplied.
const PREFETCH: usize = 4;

/// Whether the CPU has AMX-INT8 and the kernel lets this process use the tile registers.
pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (tile, int8) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 25) != 0);
        if !(tile && int8 && is_x86_feature_detected!("avx512f")) {
            return false;
        }
        // Linux hands out the 8 KiB tile state only to processes that ask for it
        // (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it tile loads fault.
        #[cfg(target_os = "linux")]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            r == 0
        }
        #[cfg(not(target_os = "linux"))]
        false
    })
}

/// A tile configuration (`ldtilecfg`'s 64-byte block).
#[repr(C, align(64))]
#[derive(Clone, Copy, PartialEq, Eq)]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// Accumulators and activation tiles for `r0` (and `r1`, maybe 0) rows; weights 16 × 64.
    fn new(r0: usize, r1: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        let mut set = |t: usize, rows: usize| {
            if rows > 0 {
                c[16 + 2 * t] = 64; // bytes per row (low byte of a u16)
                c[48 + t] = rows as u8;
            }
        };
        set(0, r0);
        set(1, r0);
        set(2, r1);
        set(3, r1);
        set(4, r0);
        set(5, r1);
        set(6, 16);
        set(7, 16);
        TileConfig(c)
    }
}

thread_local! {
    /// The configuration this thread's tiles hold, so it is loaded only when it changes.
    static LOADED: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Exact dot products of `mr ≤ 32` activation rows (`u8`, `stride` apart) with 32 channels
/// whose tiles start at `w`, into `acc` (32 × 32, row-major).
///
/// # Safety
/// AMX must be [`available`]; the rows and tiles must exist.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile(
    a: *const u8,
    stride: usize,
    mr: usize,
    w: *const i8,
    k: usize,
    acc: &mut [i32],
) {
    let (r0, r1) = (mr.min(16), mr.saturating_sub(16));
    if LOADED.get() != Some((r0, r1)) {
        let cfg = TileConfig::new(r0, r1);
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        LOADED.set(Some((r0, r1)));
    }
    let kblocks = k / 64;
    // The second block of 16 channels starts `kblocks` tiles after the first.
    let w1 = w.add(kblocks * 1024);
    let a1 = a.add(16 * stride);
    asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
    if r1 > 0 {
        asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
    }
    for kb in 0..kblocks {
        // Weights stream from memory once per step: fetch the tiles two blocks ahead, which
        // the hardware prefetcher alone does not do early enough for tile loads.
        if kb + PREFETCH < kblocks {
            for line in (0..1024).step_by(64) {
                let (p0, p1) = (
                    w.add((kb + PREFETCH) * 1024 + line),
                    w1.add((kb + PREFETCH) * 1024 + line),
                );
                _mm_prefetch::<_MM_HINT_T0>(p0);
                _mm_prefetch::<_MM_HINT_T0>(p1);
            }
        }
        asm!(
            "tileloadd tmm6, [{w0} + {s64}*1]",
            "tileloadd tmm7, [{w1} + {s64}*1]",
            "tileloadd tmm4, [{a0} + {st}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            w0 = in(reg) w.add(kb * 1024),
            w1 = in(reg) w1.add(kb * 1024),
            a0 = in(reg) a.add(kb * 64),
            st = in(reg) stride,
            s64 = in(reg) 64usize,
            options(nostack, readonly),
        );
        if r1 > 0 {
            asm!(
                "tileloadd tmm5, [{a1} + {st}*1]",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a1 = in(reg) a1.add(kb * 64),
                st = in(reg) stride,
                options(nostack, readonly),
            );
        }
    }
    let c = acc.as_mut_ptr();
    let row = 32usize * 4; // bytes per accumulator row
    asm!(
        "tilestored [{c0} + {row}*1], tmm0",
        "tilestored [{c1} + {row}*1], tmm1",
        c0 = in(reg) c,
        c1 = in(reg) c.add(16),
        row = in(reg) row,
        options(nostack),
    );
    if r1 > 0 {
        asm!(
            "tilestored [{c2} + {row}*1], tmm2",
            "tilestored [{c3} + {row}*1], tmm3",
            c2 = in(reg) c.add(16 * 32),
            c3 = in(reg) c.add(16 * 32 + 16),
            row = in(reg) row,
            options(nostack),
        );
    }
}
