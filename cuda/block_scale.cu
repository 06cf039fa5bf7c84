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

// The extra starts of block_scale._starts, in its order: per factor f, affine: the min/max fit of the
// range shrunk by f; symmetric: f * absmax mapped to the lowest, then the highest level. A start whose snapped
// (d, m) equals an earlier start's (llama.cpp's included) retraces it step for step and loses every tie to it:
// it is skipped, as BestOfStarts.drop_repeats does (no byte changes; Q4_0's -absmax/8 start IS llama.cpp's).
template <class T>
HQQ_FN void run_extra_starts(const Block<T>& b, const Config& cfg, Best& best_of_all, float d0, float m0,
                             float base_obj) {
  float lo = b.x[0], hi = b.x[0], xm = b.x[0];
  for (int e = 1; e < T::B; ++e) {
    lo = b.x[e] < lo ? b.x[e] : lo;
    hi = b.x[e] > hi ? b.x[e] : hi;
    if (abs_f(b.x[e]) > abs_f(xm)) xm = b.x[e];  // the first largest |x|, as argmax
  }
  constexpr int n_sides = T::AFFINE ? 1 : 2;
  auto start = [&](int k, float& s, float& off) {  // extra start k (factor k / n_sides, side k % n_sides)
    const float f = cfg.factors[k / n_sides];
    if constexpr (T::AFFINE) {
      const float r = hi - lo;
      s = f * r / (T::Grid::HI - T::Grid::LO);
      off = lo + cfg.one_minus[k / n_sides] * r / 2.0f - s * T::Grid::LO;
    } else {
      s = f * xm / (k % n_sides == 0 ? T::Grid::LO : T::Grid::HI);
      off = 0.0f;
    }
  };
  // trajectory keys: the bits of the snapped d (and m); on a grid symmetric about 0 (TQ*) -d retraces d mirrored,
  // so only |d| counts (block_scale._trajectory_key)
  constexpr bool mirrored = T::Grid::QMIN == -T::Grid::QMAX;
  auto key = [](float d) { return mirrored ? float_bits(abs_f(d)) : float_bits(d); };
  auto same = [&](float s, float off, float d, float m) {
    return key(snap_fp16(s)) == key(d) && (!T::AFFINE || float_bits(snap_fp16(off)) == float_bits(m));
  };
  const Best base{0.0f, 0.0f, base_obj, true};
  for (int k = 0; k < cfg.n_factors * n_sides; ++k) {
    float s, off;
    start(k, s, off);
    bool repeat = same(s, off, d0, m0);
    for (int j = 0; j < k && !repeat; ++j) {
      float sj, offj;
      start(j, sj, offj);
      repeat = same(s, off, snap_fp16(sj), snap_fp16(offj));
    }
    if (repeat) continue;
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

}  // namespace hqq

HQQ_DEFINE_ENTRY(hqq_q4_0, hqq::solve_block<hqq::Q4_0>)
HQQ_DEFINE_ENTRY(hqq_q5_0, hqq::solve_block<hqq::Q5_0>)
HQQ_DEFINE_ENTRY(hqq_q8_0, hqq::solve_block<hqq::Q8_0>)
HQQ_DEFINE_ENTRY(hqq_iq4_nl, hqq::solve_block<hqq::IQ4_NL>)
HQQ_DEFINE_ENTRY(hqq_q4_1, hqq::solve_block<hqq::Q4_1>)
HQQ_DEFINE_ENTRY(hqq_q5_1, hqq::solve_block<hqq::Q5_1>)
#if !HQQ_DEVICE_BUILD
HQQ_DEFINE_ENTRY(hqq_tq1_0, hqq::solve_block<hqq::TQ1_0>)
HQQ_DEFINE_ENTRY(hqq_tq2_0, hqq::solve_block<hqq::TQ2_0>)
#endif
