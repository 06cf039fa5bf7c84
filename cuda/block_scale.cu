// cuda/block_scale.cu -- fused HQQ fit + ggml packing of the 32-element one-scale block types:
// Q4_0, Q5_0, Q8_0, IQ4_NL (x = d*q, x = d*kvalues[q]) and Q4_1, Q5_1 (x = d*q + m).
//
// One thread solves one block, start to finish, in registers: it reads the block's values, objective and
// fitting weights and llama.cpp's answer (fields + codes, computed on the host by ggml), runs the torch
// solver hqq2gguf/optimize/block_scale.py -- starts = llama.cpp's answer + min/max (or +-absmax) range
// fits; half-quadratic loop with lp shrinkage measured in quantization steps, d (and m) snapped to fp16
// inside the loop, codes the nearest under the snapped values; keep the best iterate per start; patience
// early stop per start; the first start with the lowest objective wins -- and writes the finished ggml
// block bytes and its float32 objective.
//
// The CPU build (no GPU: the default solver, hqq2gguf/cuda/solve_cpu.py) solves LANES blocks side by side in vector
// lanes (solve_lanes, below), the same steps per block, and the last few blocks of a part one by one.
//
// Entry points (extern "C", found by name): hqq_q4_0 hqq_q5_0 hqq_q8_0 hqq_iq4_nl hqq_q4_1 hqq_q5_1 (and, in
// the CPU build only, hqq_tq1_0 hqq_tq2_0: 256-element ternary blocks),
// parameters HQQ_KERNEL_PARAMS (common.cuh).
//
// Compile check (CI, scripts/compile_cuda.sh; no GPU needed):
//   nvcc -std=c++17 -O3 -arch=sm_90 --fmad=false -c cuda/block_scale.cu -o /tmp/block_scale.o
// Run time: NVRTC through CuPy (hqq2gguf/cuda/loader.py: cupy.RawModule(code=<this file with the local
// headers inlined>, options=("-std=c++17", "--fmad=false"))), so users need no nvcc. --fmad=false matters:
// torch rounds every product before the add. CPU emulation for the tests (hqq2gguf/cuda/emulate.py):
//   c++ -std=c++17 -O2 -ffp-contract=off -shared -fPIC -x c++ cuda/block_scale.cu -o block_scale.so
#include "common.cuh"
#include "ggml_blocks.cuh"
#include "lanes.cuh"

namespace hqq {

// One type: its grid, whether it has a min, and its writer.
template <class GridT, bool AFFINE_, int TYPE_SIZE_, void (*WRITE)(unsigned char*, float, float, const signed char*),
          int B_ = 32>
struct Legacy {
  using Grid = GridT;
  static constexpr bool AFFINE = AFFINE_;
  static constexpr int B = B_, TYPE_SIZE = TYPE_SIZE_;
  HQQ_FN static void write(unsigned char* o, float d, float m, const signed char* q) { WRITE(o, d, m, q); }
};

using Q4_0 = Legacy<IntGrid<-8, 7>, false, 18, write_q4_0>;
using Q5_0 = Legacy<IntGrid<-16, 15>, false, 22, write_q5_0>;
using Q8_0 = Legacy<IntGrid<-128, 127>, false, 34, write_q8_0>;
using IQ4_NL = Legacy<Iq4Grid, false, 18, write_iq4_nl>;
using Q4_1 = Legacy<IntGrid<0, 15>, true, 20, write_q4_1>;
using Q5_1 = Legacy<IntGrid<0, 31>, true, 24, write_q5_1>;
#if !HQQ_DEVICE_BUILD  // the CPU only: 256-element blocks (ggml_blocks.cuh)
using TQ1_0 = Legacy<IntGrid<-1, 1>, false, 54, write_tq1_0, 256>;
using TQ2_0 = Legacy<IntGrid<-1, 1>, false, 66, write_tq2_0, 256>;
#endif

// One block, held in registers.
template <class T>
struct Block {
  float x[T::B], w[T::B], wf[T::B];
};

// The best iterate of a start: snapped d (and m), its objective, and whether it is llama.cpp's own block.
struct Best {
  float d, m, obj;
  bool base;
};

// weighted_sse of the block under (d, m) with the nearest codes, whose levels go to lv[] (the fit that follows
// reuses them: the same codes under the same snapped d, m).
template <class T>
HQQ_FN float score(const Block<T>& b, float d, float m, float* lv) {
  const float inv = inv_of(d);
  HQQ_UNROLL
  for (int e = 0; e < T::B; ++e) lv[e] = T::Grid::level(nearest_code<typename T::Grid, T::AFFINE>(b.x[e], inv, m));
  return torch_sum<T::B, float>([&](int e) {
    const float r = b.x[e] - (T::AFFINE ? d * lv[e] + m : d * lv[e]);
    return r * r * b.w[e];
  });
}

// One start: the half-quadratic loop from the unsnapped (s, off); improves `best` in place.
template <class T>
HQQ_FN void run_start(const Block<T>& b, const Config& cfg, float s, float off, Best& best) {
  float lv[T::B];
  int stall = 0;
  for (int it = 0;; ++it) {
    const float d = snap_fp16(s);
    const float m = T::AFFINE ? snap_fp16(off) : 0.0f;
    const float obj = score<T>(b, d, m, lv);
    const bool better = obj < best.obj;
    if (better) best = Best{d, m, obj, false};
    if (it == cfg.iterations) break;
    // fit (d, m) to the HQ target with the fitting weights
    const float inv_step = hq_inv_step(d, cfg.hq_c[it]);
    auto target = [&](int e) {
      return hq_target(b.x[e], T::AFFINE ? d * lv[e] + m : d * lv[e], inv_step, cfg.p_exp, cfg.shrink);
    };
    if constexpr (T::AFFINE) {
      const AffineSums sums =
          torch_sum<T::B, AffineSums>([&](int e) { return AffineSums::term(lv[e], target(e), b.wf[e]); });
      sums.solve(d, m, false, false, s, off);
    } else {
      s = torch_sum<T::B, ScaleSums>([&](int e) { return ScaleSums::term(lv[e], target(e), b.wf[e]); }).solve(d);
    }
    if (cfg.patience && it > 0) {
      stall = better ? 0 : stall + 1;
      if (stall >= cfg.patience) break;
    }
  }
}

// The range of a block for its extra starts: min, max, and the first largest |x| (as argmax).
struct Range {
  float lo, hi, xm;
  HQQ_FN void add(float x) {
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
    if (abs_f(x) > abs_f(xm)) xm = x;
  }
};

// The extra starts of block_scale._starts, in its order: per factor f, affine: the min/max fit of the range
// shrunk by f; symmetric: f * absmax mapped to the lowest, then the highest level. Extra start k is factor
// k / n_sides, side k % n_sides.
template <class T>
struct ExtraStarts {
  static constexpr int n_sides = T::AFFINE ? 1 : 2;
  HQQ_FN static int count(const Config& cfg) { return cfg.n_factors * n_sides; }
  HQQ_FN static void start(const Config& cfg, const Range& r, int k, float& s, float& off) {
    const float f = cfg.factors[k / n_sides];
    if constexpr (T::AFFINE) {
      const float span = r.hi - r.lo;
      s = f * span / (T::Grid::HI - T::Grid::LO);
      off = r.lo + cfg.one_minus[k / n_sides] * span / 2.0f - s * T::Grid::LO;
    } else {
      s = f * r.xm / (k % n_sides == 0 ? T::Grid::LO : T::Grid::HI);
      off = 0.0f;
    }
  }
  // trajectory keys: the bits of the snapped d (and m); on a grid symmetric about 0 (TQ*) -d retraces d
  // mirrored, so only |d| counts (block_scale._trajectory_key)
  HQQ_FN static unsigned int key(float d) {
    constexpr bool mirrored = T::Grid::QMIN == -T::Grid::QMAX;
    return mirrored ? float_bits(abs_f(d)) : float_bits(d);
  }
  HQQ_FN static bool same(float s, float off, float d, float m) {
    return key(snap_fp16(s)) == key(d) && (!T::AFFINE || float_bits(snap_fp16(off)) == float_bits(m));
  }
  // A start whose snapped (d, m) equals an earlier start's (llama.cpp's (d0, m0) included) retraces it step for
  // step and loses every tie to it: it is skipped, as BestOfStarts.drop_repeats does (no byte changes; Q4_0's
  // -absmax/8 start IS llama.cpp's).
  HQQ_FN static bool repeat(const Config& cfg, const Range& r, int k, float s, float off, float d0, float m0) {
    bool rep = same(s, off, d0, m0);
    for (int j = 0; j < k && !rep; ++j) {
      float sj, offj;
      start(cfg, r, j, sj, offj);
      rep = same(s, off, snap_fp16(sj), snap_fp16(offj));
    }
    return rep;
  }
};

template <class T>
HQQ_FN void run_extra_starts(const Block<T>& b, const Config& cfg, Best& best_of_all, float d0, float m0,
                             float base_obj) {
  Range r{b.x[0], b.x[0], b.x[0]};
  for (int e = 1; e < T::B; ++e) r.add(b.x[e]);
  const Best base{0.0f, 0.0f, base_obj, true};
  for (int k = 0; k < ExtraStarts<T>::count(cfg); ++k) {
    float s, off;
    ExtraStarts<T>::start(cfg, r, k, s, off);
    if (ExtraStarts<T>::repeat(cfg, r, k, s, off, d0, m0)) continue;
    Best best = base;
    run_start<T>(b, cfg, s, off, best);
    if (best.obj < best_of_all.obj) best_of_all = best;  // argmin over starts: the first on ties
  }
}

template <class T>
HQQ_FN void solve_block(const Inputs& in, const Config& cfg, long long i) {
  const View v(in, i);
  Block<T> b;
  signed char q[T::B];
  HQQ_UNROLL
  for (int e = 0; e < T::B; ++e) {
    b.x[e] = v.X(e);
    b.w[e] = v.W(e);
    b.wf[e] = v.WF(e);
    q[e] = (signed char)v.Q0(e);
  }
  // llama.cpp's answer, scored: the initial best of every start
  const float d0 = in.base_d[i], m0 = T::AFFINE ? in.base_m[i] : 0.0f;
  const float base_obj = torch_sum<T::B, float>([&](int e) {
    const float y = T::Grid::level(q[e]) * d0;
    const float r = b.x[e] - (T::AFFINE ? y + m0 : y);
    return r * r * b.w[e];
  });
  Best best{d0, m0, base_obj, true};
  run_start<T>(b, cfg, d0, m0, best);  // start 0: llama.cpp's own fields
  run_extra_starts<T>(b, cfg, best, d0, m0, base_obj);
  if (!best.base) {
    const float inv = inv_of(best.d);
    for (int e = 0; e < T::B; ++e) q[e] = (signed char)nearest_code<typename T::Grid, T::AFFINE>(b.x[e], inv, best.m);
  }
  T::write(in.out + i * T::TYPE_SIZE, best.base ? d0 : best.d, best.base ? m0 : best.m, q);
  in.out_obj[i] = best.obj;
}

#if !HQQ_DEVICE_BUILD
// ---------------------------------------------------------------- the CPU build: LANES blocks side by side
//
// solve_block one block at a time is scalar code: its sums must add in torch's order, which a vector over one
// block's elements cannot follow without shuffles. Across blocks every step is the same, so here LANES blocks
// run solve_block's float32 steps side by side in vectors (GCC/Clang vector extensions), element-major (x[e][l]
// is element e of block i + l): each lane's sums add in torch's order, and each lane follows its own control
// flow through masks (a start skipped as a repeat, a patience stop). The same operations on the same numbers give
// each block exactly solve_block's bytes; the tests hold both to the torch solver's.

template <class T>
struct LaneBlocks {
  LaneF x[T::B], w[T::B], wf[T::B];
};

struct LaneBest {
  float d[LANES], m[LANES], obj[LANES];
  bool base[LANES];
  HQQ_FN void take(int l, float d_, float m_, float obj_, bool base_) {
    d[l] = d_;
    m[l] = m_;
    obj[l] = obj_;
    base[l] = base_;
  }
};

// score for every lane: weighted_sse under (d, m) with the nearest codes, whose levels go to lv.
template <class T>
HQQ_FN LaneF score_lanes(const LaneBlocks<T>& b, LaneF d, LaneF m, LaneF* lv) {
  LaneF inv, t[T::B];
  for (int l = 0; l < LANES; ++l) inv[l] = inv_of(d[l]);
  for (int e = 0; e < T::B; ++e) {
    const LaneF x = b.x[e];
    lv[e] = LaneGrid<typename T::Grid>::level_of_nearest(T::AFFINE ? (x - m) * inv : x * inv);
    const LaneF r = x - (T::AFFINE ? d * lv[e] + m : d * lv[e]);
    t[e] = r * r * b.w[e];
  }
  return torch_sum_lanes<T::B>(t);
}

// run_start's fit for every lane: (s, off) fitted to the HQ target with the fitting weights. hq_target's pow
// runs only on the elements where the shrinkage is active (|error| above 0.999 steps), after the vector loop.
template <class T>
HQQ_FN void fit_lanes(const LaneBlocks<T>& b, const Config& cfg, float c, LaneF d, LaneF m, const LaneF* lv,
                      float* s, float* off) {
  LaneF inv_step, t[T::B], x_hat[T::B];
  for (int l = 0; l < LANES; ++l) inv_step[l] = hq_inv_step(d[l], c);
  LaneI shrunk = splat_i(0);
  for (int e = 0; e < T::B; ++e) {
    x_hat[e] = T::AFFINE ? d * lv[e] + m : d * lv[e];
    shrunk |= ~(abs_lanes(b.x[e] - x_hat[e]) * inv_step <= splat(0.999f));
    t[e] = b.x[e];
  }
  if (cfg.shrink && any(shrunk))
    for (int e = 0; e < T::B; ++e)
      for (int l = 0; l < LANES; ++l)
        if (!(abs_f(b.x[e][l] - x_hat[e][l]) * inv_step[l] <= 0.999f))
          t[e][l] = hq_target(b.x[e][l], x_hat[e][l], inv_step[l], cfg.p_exp, true);
  if constexpr (T::AFFINE) {  // AffineSums::term, each component summed on its own
    LaneF wl[T::B], wt[T::B], wll[T::B], wlt[T::B];
    for (int e = 0; e < T::B; ++e) {
      wl[e] = b.wf[e] * lv[e];
      wt[e] = b.wf[e] * t[e];
      wll[e] = wl[e] * lv[e];
      wlt[e] = wl[e] * t[e];
    }
    const LaneF sw = torch_sum_lanes<T::B>(b.wf), sl = torch_sum_lanes<T::B>(wl), st = torch_sum_lanes<T::B>(wt),
                sll = torch_sum_lanes<T::B>(wll), slt = torch_sum_lanes<T::B>(wlt);
    for (int l = 0; l < LANES; ++l)
      AffineSums{sw[l], sl[l], st[l], sll[l], slt[l]}.solve(d[l], m[l], false, false, s[l], off[l]);
  } else {  // ScaleSums::term
    LaneF den[T::B], num[T::B];
    for (int e = 0; e < T::B; ++e) {
      const LaneF wl = b.wf[e] * lv[e];
      den[e] = wl * lv[e];
      num[e] = wl * t[e];
    }
    const LaneF sd = torch_sum_lanes<T::B>(den), sn = torch_sum_lanes<T::B>(num);
    for (int l = 0; l < LANES; ++l) s[l] = ScaleSums{sd[l], sn[l]}.solve(d[l]);
  }
}

// run_start for every lane where active[] (lanes whose start is skipped, or stopped by patience, are left alone).
template <class T>
HQQ_FN void run_start_lanes(const LaneBlocks<T>& b, const Config& cfg, float* s, float* off, bool* active,
                            LaneBest& best) {
  LaneF lv[T::B], d, m;
  LanePatience patience;
  for (int it = 0;; ++it) {
    for (int l = 0; l < LANES; ++l) {
      d[l] = snap_fp16(s[l]);
      m[l] = T::AFFINE ? snap_fp16(off[l]) : 0.0f;
    }
    const LaneF obj = score_lanes<T>(b, d, m, lv);
    bool better[LANES];
    for (int l = 0; l < LANES; ++l) {
      better[l] = obj[l] < best.obj[l];
      if (active[l] && better[l]) best.take(l, d[l], m[l], obj[l], false);
    }
    if (it == cfg.iterations) break;
    fit_lanes<T>(b, cfg, cfg.hq_c[it], d, m, lv, s, off);
    if (cfg.patience && it > 0 && !patience.go_on(better, active, cfg.patience)) break;
  }
}

// solve_block for blocks i0 .. i0 + LANES - 1 of block-major rows (elem_stride 1).
template <class T>
HQQ_FN void solve_lanes(const Inputs& in, const Config& cfg, long long i0) {
  LaneBlocks<T> b;
  LaneF t[T::B], d0, m0;
  for (int l = 0; l < LANES; ++l) {
    const View v(in, i0 + l);
    d0[l] = in.base_d[i0 + l];
    m0[l] = T::AFFINE ? in.base_m[i0 + l] : 0.0f;
    for (int e = 0; e < T::B; ++e) {
      b.x[e][l] = v.x[e];
      b.w[e][l] = v.w[e];
      b.wf[e][l] = v.wf[e];
      const float y = T::Grid::level(v.q0[e]) * d0[l];  // llama.cpp's answer, scored
      const float r = v.x[e] - (T::AFFINE ? y + m0[l] : y);
      t[e][l] = r * r * v.w[e];
    }
  }
  const LaneF base_obj = torch_sum_lanes<T::B>(t);
  LaneBest best;
  float s[LANES], off[LANES];
  bool active[LANES];
  for (int l = 0; l < LANES; ++l) {
    best.take(l, d0[l], m0[l], base_obj[l], true);
    s[l] = d0[l];
    off[l] = m0[l];
    active[l] = true;
  }
  run_start_lanes<T>(b, cfg, s, off, active, best);  // start 0: llama.cpp's own fields
  LaneF lo = b.x[0], hi = b.x[0], xm = b.x[0];  // Range::add in every lane
  for (int e = 1; e < T::B; ++e) {
    const LaneF x = b.x[e];
    lo = select(x < lo, x, lo);
    hi = select(x > hi, x, hi);
    xm = select(abs_lanes(x) > abs_lanes(xm), x, xm);
  }
  Range r[LANES];
  for (int l = 0; l < LANES; ++l) r[l] = Range{lo[l], hi[l], xm[l]};
  for (int k = 0; k < ExtraStarts<T>::count(cfg); ++k) {
    bool any_active = false;
    for (int l = 0; l < LANES; ++l) {
      ExtraStarts<T>::start(cfg, r[l], k, s[l], off[l]);
      active[l] = !ExtraStarts<T>::repeat(cfg, r[l], k, s[l], off[l], d0[l], m0[l]);
      any_active = any_active || active[l];
    }
    if (!any_active) continue;
    LaneBest start_best;  // a skipped lane keeps llama.cpp's block here, which never beats best
    for (int l = 0; l < LANES; ++l) start_best.take(l, 0.0f, 0.0f, base_obj[l], true);
    run_start_lanes<T>(b, cfg, s, off, active, start_best);
    for (int l = 0; l < LANES; ++l)  // argmin over starts: the first on ties
      if (start_best.obj[l] < best.obj[l])
        best.take(l, start_best.d[l], start_best.m[l], start_best.obj[l], start_best.base[l]);
  }
  for (int l = 0; l < LANES; ++l) {
    const View v(in, i0 + l);
    signed char q[T::B];
    const float inv = inv_of(best.d[l]);
    for (int e = 0; e < T::B; ++e)
      q[e] = best.base[l] ? v.q0[e] : (signed char)nearest_code<typename T::Grid, T::AFFINE>(v.x[e], inv, best.m[l]);
    T::write(in.out + (i0 + l) * T::TYPE_SIZE, best.base[l] ? d0[l] : best.d[l], best.base[l] ? m0[l] : best.m[l], q);
    in.out_obj[i0 + l] = best.obj[l];
  }
}
#endif

}  // namespace hqq

HQQ_BLOCK_ENTRY(hqq_q4_0, hqq::Q4_0)
HQQ_BLOCK_ENTRY(hqq_q5_0, hqq::Q5_0)
HQQ_BLOCK_ENTRY(hqq_q8_0, hqq::Q8_0)
HQQ_BLOCK_ENTRY(hqq_iq4_nl, hqq::IQ4_NL)
HQQ_BLOCK_ENTRY(hqq_q4_1, hqq::Q4_1)
HQQ_BLOCK_ENTRY(hqq_q5_1, hqq::Q5_1)
#if !HQQ_DEVICE_BUILD
HQQ_BLOCK_ENTRY(hqq_tq1_0, hqq::TQ1_0)
HQQ_BLOCK_ENTRY(hqq_tq2_0, hqq::TQ2_0)
#endif
