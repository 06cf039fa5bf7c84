// cuda/kquant.cu -- fused HQQ fit + ggml packing of the K-quant super-blocks (256 elements):
// Q4_K, Q5_K, Q2_K (x = (d*sc)*q - dmin*mn), Q3_K, Q6_K (x = (d*sc)*q), IQ4_XS (x = (d*sc)*kvalues[q]).
//
// One thread solves one super-block, start to finish: it reads the block's values, objective and fitting
// weights and llama.cpp's answer (fields + codes, computed on the host by ggml), runs the torch solver
// hqq2gguf/optimize/kquant.py -- per iteration: nearest codes under the snapped fields, score, keep the best;
// HQ target with lp shrinkage in steps of the sub-block scale; per sub-block weighted least squares, then the
// integer sub-scale (and min) among round(value / d) +- radius and the current one, on the exact objective;
// (d, dmin) refit to the target and snapped to fp16; patience early stop per start -- and writes the
// finished ggml block bytes and its float32 objective. Sub-block state lives in registers/local memory;
// the 256 values are re-read from global memory (element-major, so a warp's loads are coalesced).
//
// The CPU build (no GPU: the default solver, hqq2gguf/cuda/solve_cpu.py) solves LANES super-blocks side by side in
// vector lanes (solve_lanes, below; cuda/lanes.cuh), the same steps per super-block, and a part's last few one by one.
//
// Entry points (extern "C", found by name): hqq_q4_k hqq_q5_k hqq_q6_k hqq_q3_k hqq_q2_k hqq_iq4_xs,
// parameters HQQ_KERNEL_PARAMS (common.cuh).
//
// Compile check (CI, scripts/compile_cuda.sh; no GPU needed):
//   nvcc -std=c++17 -O3 -arch=sm_90 --fmad=false -c cuda/kquant.cu -o /tmp/kquant.o
// Run time: NVRTC through CuPy (hqq2gguf/cuda/loader.py: cupy.RawModule(code=<this file with the local
// headers inlined>, options=("-std=c++17", "--fmad=false"))), so users need no nvcc. CPU emulation for the
// tests (hqq2gguf/cuda/emulate.py):
//   c++ -std=c++17 -O2 -ffp-contract=off -shared -fPIC -x c++ cuda/kquant.cu -o kquant.so
#include "common.cuh"
#include "ggml_blocks.cuh"
#include "lanes.cuh"

namespace hqq {

using KWrite = void (*)(unsigned char*, float, float, const int*, const int*, const signed char*);

// One type (qtypes.py): grid, G sub-blocks of S elements, sub-scale range, min range (MN_HI 0: no mins).
template <class GridT, int G_, int SC_LO_, int SC_HI_, int MN_HI_, int TYPE_SIZE_, KWrite WRITE>
struct KType {
  using Grid = GridT;
  static constexpr int G = G_, S = 256 / G_, SC_LO = SC_LO_, SC_HI = SC_HI_, MN_HI = MN_HI_;
  static constexpr int TYPE_SIZE = TYPE_SIZE_;
  static constexpr bool AFFINE = MN_HI_ > 0;
  HQQ_FN static void write(unsigned char* o, float d, float dmin, const int* sc, const int* mn, const signed char* q) {
    WRITE(o, d, dmin, sc, mn, q);
  }
};

using Q4_K = KType<IntGrid<0, 15>, 8, 0, 63, 63, 144, write_q4_k>;
using Q5_K = KType<IntGrid<0, 31>, 8, 0, 63, 63, 176, write_q5_k>;
using Q6_K = KType<IntGrid<-32, 31>, 16, -128, 127, 0, 210, write_q6_k>;
using Q3_K = KType<IntGrid<-4, 3>, 16, -32, 31, 0, 110, write_q3_k>;
using Q2_K = KType<IntGrid<0, 3>, 16, 0, 15, 15, 84, write_q2_k>;
using IQ4_XS = KType<Iq4Grid, 8, -32, 31, 0, 136, write_iq4_xs>;

// The state of one start (kquant.py's ``st``): fp16 super-scales and integer sub-scales/mins, as float32.
template <class T>
struct Fields {
  float d, dmin;
  float sc[T::G], mn[T::G];
};

template <class T>
struct Best {
  Fields<T> f;
  float obj;
  bool base;  // llama.cpp's own block (its codes, not the nearest ones)
};

// Sub-block g's (scale, offset) as ggml computes them: (d*sc, -(dmin*mn)).
template <class T>
HQQ_FN float sub_scale(const Fields<T>& f, int g) { return f.d * f.sc[g]; }
template <class T>
HQQ_FN float sub_offset(const Fields<T>& f, int g) { return T::AFFINE ? -(f.dmin * f.mn[g]) : 0.0f; }

#if !HQQ_DEVICE_BUILD
// The CPU's block-major rows (View::es == 1): sub-block g's levels under (D, B) (inv = inv_of(D), as the caller
// has it) and HQ targets into lv[], t[] in a
// loop the compiler vectorizes; hq_target's pow runs after it, one element at a time, only where the shrinkage is
// active (|error| above 0.999 steps). The same float32 steps as the per-element lambdas of the GPU build.
template <class T>
HQQ_FN void sub_targets(const View& v, const Config& cfg, int g, float D, float B, float inv, float inv_step,
                        float* lv, float* t) {
  const float* x = v.x + g * T::S;
  bool shrunk = false;
  for (int j = 0; j < T::S; ++j) {
    lv[j] = T::Grid::level(nearest_code<typename T::Grid, T::AFFINE>(x[j], inv, B));
    const float e = x[j] - (T::AFFINE ? D * lv[j] + B : D * lv[j]);
    shrunk |= !(abs_f(e) * inv_step <= 0.999f);
    t[j] = x[j];
  }
  if (cfg.shrink && shrunk)
    for (int j = 0; j < T::S; ++j)
      t[j] = hq_target(x[j], T::AFFINE ? D * lv[j] + B : D * lv[j], inv_step, cfg.p_exp, true);
}
#endif

// weighted_sse of sub-block g under (D, B) with the nearest codes.
template <class T>
HQQ_FN float sub_sse(const View& v, int g, float D, float B) {
  const float inv = inv_of(D);
#if !HQQ_DEVICE_BUILD
  if (v.es == 1) {  // the CPU's block-major rows: every term first (a loop the compiler vectorizes), then the sum
    const float *x = v.x + g * T::S, *w = v.w + g * T::S;
    float t[T::S];
    for (int j = 0; j < T::S; ++j) {
      const float lv = T::Grid::level(nearest_code<typename T::Grid, T::AFFINE>(x[j], inv, B));
      const float r = x[j] - (T::AFFINE ? D * lv + B : D * lv);
      t[j] = r * r * w[j];
    }
    return torch_sum_of<T::S>(t);
  }
#endif
  return torch_sum<T::S, float>([&](int j) {
    const int e = g * T::S + j;
    const float x = v.X(e);
    const float lv = T::Grid::level(nearest_code<typename T::Grid, T::AFFINE>(x, inv, B));
    const float r = x - (T::AFFINE ? D * lv + B : D * lv);
    return r * r * v.W(e);
  });
}

// The objective of f: per sub-block into err[], and their sum.
template <class T>
HQQ_FN float score(const View& v, const Fields<T>& f, float* err) {
  for (int g = 0; g < T::G; ++g) err[g] = sub_sse<T>(v, g, sub_scale(f, g), sub_offset(f, g));
  return torch_sum<T::G, float>([&](int g) { return err[g]; });
}

// Step 3a: per sub-block weighted least squares of (scale, offset) to the HQ target (fitting weights).
template <class T>
HQQ_FN void fit_sub(const View& v, const Config& cfg, const Fields<T>& f, float c, float* s, float* b) {
  for (int g = 0; g < T::G; ++g) {
    const float D = sub_scale(f, g), B = sub_offset(f, g);
    const float inv = inv_of(D), inv_step = hq_inv_step(D, c);
#if !HQQ_DEVICE_BUILD
    if (v.es == 1) {
      float lv[T::S], t[T::S];
      sub_targets<T>(v, cfg, g, D, B, inv, inv_step, lv, t);
      const float* wf = v.wf + g * T::S;
      if constexpr (T::AFFINE) {
        AffineSums::of<T::S>(lv, t, wf).solve(D, B, true, true, s[g], b[g]);
      } else {
        s[g] = ScaleSums::of<T::S>(lv, t, wf).solve(D);
        b[g] = 0.0f;
      }
      continue;
    }
#endif
    auto term = [&](int j, float& lv, float& t) {
      const float x = v.X(g * T::S + j);
      lv = T::Grid::level(nearest_code<typename T::Grid, T::AFFINE>(x, inv, B));
      t = hq_target(x, T::AFFINE ? D * lv + B : D * lv, inv_step, cfg.p_exp, cfg.shrink);
    };
    if constexpr (T::AFFINE) {
      const AffineSums sums = torch_sum<T::S, AffineSums>([&](int j) {
        float lv, t;
        term(j, lv, t);
        return AffineSums::term(lv, t, v.WF(g * T::S + j));
      });
      sums.solve(D, B, true, true, s[g], b[g]);
    } else {
      s[g] = torch_sum<T::S, ScaleSums>([&](int j) {
               float lv, t;
               term(j, lv, t);
               return ScaleSums::term(lv, t, v.WF(g * T::S + j));
             }).solve(D);
      b[g] = 0.0f;
    }
  }
}

// Step 3b (_pick_sub): the integer sub-scale (and min) of each sub-block: the current ones (error err[g])
// or round(value / d) + offsets in 0, -1, 1, ... +-radius, whichever has the lowest objective (first on ties).
template <class T>
HQQ_FN void pick_sub(const View& v, int radius, Fields<T>& f, const float* s, const float* b, const float* err) {
  const int n = 2 * radius + 1;
  for (int g = 0; g < T::G; ++g) {
    const float sc0 = rint_even(ratio(s[g], f.d));
    const float mn0 = T::AFFINE ? rint_even(ratio(-b[g], f.dmin)) : 0.0f;
    float best_err = err[g], best_sc = f.sc[g], best_mn = f.mn[g];
    for (int ki = 0; ki < n; ++ki) {
      const float sc = clamp(sc0 + (float)nth_offset(ki), (float)T::SC_LO, (float)T::SC_HI);
      for (int kj = 0; kj < (T::AFFINE ? n : 1); ++kj) {
        const float mn = T::AFFINE ? clamp(mn0 + (float)nth_offset(kj), 0.0f, (float)T::MN_HI) : 0.0f;
        // the current pair: its error is err[g] (the same sum), which cannot beat best_err <= err[g]
        if (sc == f.sc[g] && mn == f.mn[g]) continue;
        const float D = f.d * sc;
        const float e = sub_sse<T>(v, g, D, T::AFFINE ? -(f.dmin * mn) : 0.0f);
        if (e < best_err) {
          best_err = e;
          best_sc = sc;
          best_mn = mn;
        }
      }
    }
    f.sc[g] = best_sc;
    f.mn[g] = best_mn;
  }
}

// Step 4 (_refit_super): (d, dmin) by weighted least squares to the HQ target under the chosen integers and
// codes, over the whole super-block (one sum of 256 terms), snapped to fp16.
template <class T>
HQQ_FN void refit_super(const View& v, const Config& cfg, Fields<T>& f, float c) {
  float inv[T::G], inv_step[T::G];
  for (int g = 0; g < T::G; ++g) {
    inv[g] = inv_of(sub_scale(f, g));
    inv_step[g] = hq_inv_step(sub_scale(f, g), c);
  }
#if !HQQ_DEVICE_BUILD
  if (v.es == 1) {
    float a[256], t[256], lv[T::S];
    for (int g = 0; g < T::G; ++g) {
      sub_targets<T>(v, cfg, g, sub_scale(f, g), sub_offset(f, g), inv[g], inv_step[g], lv, t + g * T::S);
      for (int j = 0; j < T::S; ++j) a[g * T::S + j] = f.sc[g] * lv[j];
    }
    if constexpr (T::AFFINE) {
      float c[256], d, dmin;
      for (int e = 0; e < 256; ++e) c[e] = -f.mn[e / T::S];
      PairSums::of<256>(a, c, t, v.wf).solve(f.d, f.dmin, d, dmin);
      f.d = snap_fp16(d);
      f.dmin = snap_fp16(dmin);
    } else {
      f.d = snap_fp16(ScaleSums::of<256>(a, t, v.wf).solve(f.d));
    }
    return;
  }
#endif
  auto term = [&](int e, float& a, float& t) {
    const int g = e / T::S;
    const float D = sub_scale(f, g), B = sub_offset(f, g), x = v.X(e);
    const float lv = T::Grid::level(nearest_code<typename T::Grid, T::AFFINE>(x, inv[g], B));
    t = hq_target(x, T::AFFINE ? D * lv + B : D * lv, inv_step[g], cfg.p_exp, cfg.shrink);
    a = f.sc[g] * lv;
  };
  if constexpr (T::AFFINE) {
    const PairSums sums = torch_sum<256, PairSums>([&](int e) {
      float a, t;
      term(e, a, t);
      return PairSums::term(a, -f.mn[e / T::S], t, v.WF(e));
    });
    float d, dmin;
    sums.solve(f.d, f.dmin, d, dmin);
    f.d = snap_fp16(d);
    f.dmin = snap_fp16(dmin);
  } else {
    f.d = snap_fp16(torch_sum<256, ScaleSums>([&](int e) {
                      float a, t;
                      term(e, a, t);
                      return ScaleSums::term(a, t, v.WF(e));
                    }).solve(f.d));
  }
}

// One start: improves `best` in place (solve_super's loop for one (start, block) row).
template <class T>
HQQ_FN void run_start(const View& v, const Config& cfg, Fields<T> f, Best<T>& best) {
  float err[T::G], s[T::G], b[T::G];
  int stall = 0;
  for (int it = 0;; ++it) {
    const float obj = score<T>(v, f, err);
    const bool better = obj < best.obj;
    if (better) best = Best<T>{f, obj, false};
    if (it == cfg.iterations) break;
    const float c = cfg.hq_c[it];
    fit_sub<T>(v, cfg, f, c, s, b);
    pick_sub<T>(v, cfg.radius, f, s, b, err);
    refit_super<T>(v, cfg, f, c);
    if (cfg.patience && it > 0) {
      stall = better ? 0 : stall + 1;
      if (stall >= cfg.patience) break;
    }
  }
}

// _Super.snap: per-sub-block float (scale, offset) -> fp16 super-scales and rounded integers.
template <class T>
HQQ_FN Fields<T> snap_fields(const float* s, const float* b) {
  Fields<T> f;
  if constexpr (T::SC_LO < 0) {  // signed sub-scales: the largest |scale| goes to the negative end, as llama.cpp
    float sm = s[0];
    for (int g = 1; g < T::G; ++g) sm = abs_f(s[g]) > abs_f(sm) ? s[g] : sm;
    f.d = snap_fp16(sm / (float)T::SC_LO);
  } else {
    float sm = s[0];
    for (int g = 1; g < T::G; ++g) sm = s[g] > sm ? s[g] : sm;
    f.d = snap_fp16(sm / (float)T::SC_HI);
  }
  float mmax = -b[0];
  for (int g = 1; g < T::G; ++g) mmax = -b[g] > mmax ? -b[g] : mmax;
  f.dmin = T::AFFINE ? snap_fp16(mmax / (float)T::MN_HI) : 0.0f;
  for (int g = 0; g < T::G; ++g) {
    f.sc[g] = clamp(rint_even(ratio(s[g], f.d)), (float)T::SC_LO, (float)T::SC_HI);
    f.mn[g] = T::AFFINE ? clamp(rint_even(ratio(-b[g], f.dmin)), 0.0f, (float)T::MN_HI) : 0.0f;
  }
  return f;
}

// Extra start (factor k, side) of one sub-block from its min lo, range r and first largest |x| xm: its float
// (scale, offset) before snap_fields. Sides: 2 for signed sub-scales (absmax to the lowest, then the highest level).
template <class T>
HQQ_FN constexpr int extra_sides() { return T::AFFINE ? 1 : (T::SC_LO < 0 ? 2 : 1); }
template <class T>
HQQ_FN void extra_start(const Config& cfg, int k, int side, float lo, float r, float xm, float& s, float& b) {
  const float f = cfg.factors[k];
  if constexpr (T::AFFINE) {
    s = f * r / (T::Grid::HI - T::Grid::LO);
    b = clamp_max(lo + cfg.one_minus[k] * r / 2.0f - s * T::Grid::LO, 0.0f);
  } else {
    s = f * xm / (extra_sides<T>() == 2 && side == 0 ? T::Grid::LO : T::Grid::HI);
    b = 0.0f;
  }
}

// _extra_starts, in its order: per factor, affine: per-sub-block min/max fits of the range shrunk by f
// (offsets <= 0); symmetric: f * absmax per sub-block mapped to the lowest (signed types), then highest level.
template <class T>
HQQ_FN void run_extra_starts(const View& v, const Config& cfg, const Fields<T>& base, float base_obj,
                             Best<T>& best_of_all) {
  float lo[T::G], r[T::G], xm[T::G];
  for (int g = 0; g < T::G; ++g) {
    float mn = v.X(g * T::S), mx = mn, am = mn;
    for (int j = 1; j < T::S; ++j) {
      const float x = v.X(g * T::S + j);
      mn = x < mn ? x : mn;
      mx = x > mx ? x : mx;
      am = abs_f(x) > abs_f(am) ? x : am;  // the first largest |x|, as argmax
    }
    lo[g] = clamp_max(mn, 0.0f);
    r[g] = mx - lo[g];
    xm[g] = am;
  }
  for (int k = 0; k < cfg.n_factors; ++k) {
    for (int side = 0; side < extra_sides<T>(); ++side) {
      float s[T::G], b[T::G];
      for (int g = 0; g < T::G; ++g) extra_start<T>(cfg, k, side, lo[g], r[g], xm[g], s[g], b[g]);
      Best<T> best{base, base_obj, true};  // every start's initial best: llama.cpp's block
      run_start<T>(v, cfg, snap_fields<T>(s, b), best);
      if (best.obj < best_of_all.obj) best_of_all = best;  // argmin over starts: the first on ties
    }
  }
}

// The chosen fields' block: llama.cpp's codes where it is llama.cpp's block, else the nearest codes.
template <class T>
HQQ_FN void write_block(const Inputs& in, const View& v, long long i, const Best<T>& best) {
  signed char q[256];
  int sc[T::G], mn[T::G];
  for (int g = 0; g < T::G; ++g) {
    const float D = sub_scale(best.f, g), B = sub_offset(best.f, g), inv = inv_of(D);
    for (int j = 0; j < T::S; ++j) {
      const int e = g * T::S + j;
      q[e] = (signed char)(best.base ? v.Q0(e) : nearest_code<typename T::Grid, T::AFFINE>(v.X(e), inv, B));
    }
    sc[g] = (int)best.f.sc[g];
    mn[g] = (int)best.f.mn[g];
  }
  T::write(in.out + i * T::TYPE_SIZE, best.f.d, best.f.dmin, sc, mn, q);
  in.out_obj[i] = best.obj;
}

template <class T>
HQQ_FN void solve_block(const Inputs& in, const Config& cfg, long long i) {
  const View v(in, i);
  Fields<T> base;  // llama.cpp's answer: the first start and the initial best of every start
  base.d = in.base_d[i];
  base.dmin = T::AFFINE ? in.base_m[i] : 0.0f;
  for (int g = 0; g < T::G; ++g) {
    base.sc[g] = (float)in.base_sc[i * T::G + g];
    base.mn[g] = T::AFFINE ? (float)in.base_mn[i * T::G + g] : 0.0f;
  }
  float base_err[T::G];
  for (int g = 0; g < T::G; ++g) {
    const float D = sub_scale(base, g), B = sub_offset(base, g);
    base_err[g] = torch_sum<T::S, float>([&](int j) {
      const int e = g * T::S + j;
      const float y = D * T::Grid::level(v.Q0(e));
      const float r = v.X(e) - (T::AFFINE ? y + B : y);
      return r * r * v.W(e);
    });
  }
  const float base_obj = torch_sum<T::G, float>([&](int g) { return base_err[g]; });
  Best<T> best{base, base_obj, true};
  run_start<T>(v, cfg, base, best);
  run_extra_starts<T>(v, cfg, base, base_obj, best);

  write_block<T>(in, v, i, best);
}


#if !HQQ_DEVICE_BUILD
// ---------------------------------------------------------------- the CPU build: LANES super-blocks side by side
//
// solve_block's steps for LANES super-blocks at once (cuda/lanes.cuh), element-major (x[e] holds element e of every
// lane's super-block), every sum in torch's order per lane, each lane with its own patience stop and its own
// candidate sub-scales: the same float32 operations per super-block as solve_block, so the same bytes.

template <class T>
struct LaneSupers {
  LaneF x[256], w[256], wf[256];
};

template <class T>
struct LaneFields {
  LaneF d, dmin, sc[T::G], mn[T::G];
  HQQ_FN Fields<T> lane(int l) const {
    Fields<T> f;
    f.d = d[l];
    f.dmin = dmin[l];
    for (int g = 0; g < T::G; ++g) {
      f.sc[g] = sc[g][l];
      f.mn[g] = mn[g][l];
    }
    return f;
  }
  HQQ_FN void set(int l, const Fields<T>& f) {
    d[l] = f.d;
    dmin[l] = f.dmin;
    for (int g = 0; g < T::G; ++g) {
      sc[g][l] = f.sc[g];
      mn[g][l] = f.mn[g];
    }
  }
  HQQ_FN LaneF scale(int g) const { return d * sc[g]; }  // sub_scale, sub_offset in every lane
  HQQ_FN LaneF offset(int g) const { return T::AFFINE ? -(dmin * mn[g]) : splat(0.0f); }
};

template <class T>
struct LaneBestK {
  LaneFields<T> f;
  float obj[LANES];
  bool base[LANES];
  HQQ_FN void take(int l, const Fields<T>& f_, float obj_, bool base_) {
    f.set(l, f_);
    obj[l] = obj_;
    base[l] = base_;
  }
};

HQQ_FN LaneF inv_lanes(LaneF d) { return select(d != splat(0.0f), splat(1.0f) / d, splat(0.0f)); }  // inv_of

// sub_sse of sub-block g under (D, B) in every lane.
template <class T>
HQQ_FN LaneF sub_sse_lanes(const LaneSupers<T>& b, int g, LaneF D, LaneF B) {
  const LaneF inv = inv_lanes(D);
  LaneF t[T::S];
  for (int j = 0; j < T::S; ++j) {
    const LaneF x = b.x[g * T::S + j];
    const LaneF lv = LaneGrid<typename T::Grid>::level_of_nearest(T::AFFINE ? (x - B) * inv : x * inv);
    const LaneF r = x - (T::AFFINE ? D * lv + B : D * lv);
    t[j] = r * r * b.w[g * T::S + j];
  }
  return torch_sum_lanes<T::S>(t);
}

template <class T>
HQQ_FN LaneF score_lanes(const LaneSupers<T>& b, const LaneFields<T>& f, LaneF* err) {
  for (int g = 0; g < T::G; ++g) err[g] = sub_sse_lanes<T>(b, g, f.scale(g), f.offset(g));
  return torch_sum_lanes<T::G>(err);
}

// sub_targets in every lane: levels and HQ targets of sub-block g (pow only where the shrinkage is active).
template <class T>
HQQ_FN void sub_targets_lanes(const LaneSupers<T>& b, const Config& cfg, int g, LaneF D, LaneF B, LaneF inv,
                              LaneF inv_step, LaneF* lv, LaneF* t) {
  LaneI shrunk = splat_i(0);
  for (int j = 0; j < T::S; ++j) {
    const LaneF x = b.x[g * T::S + j];
    lv[j] = LaneGrid<typename T::Grid>::level_of_nearest(T::AFFINE ? (x - B) * inv : x * inv);
    shrunk |= ~(abs_lanes(x - (T::AFFINE ? D * lv[j] + B : D * lv[j])) * inv_step <= splat(0.999f));
    t[j] = x;
  }
  if (cfg.shrink && any(shrunk))
    for (int j = 0; j < T::S; ++j)
      for (int l = 0; l < LANES; ++l) {
        const float x = b.x[g * T::S + j][l], x_hat = T::AFFINE ? D[l] * lv[j][l] + B[l] : D[l] * lv[j][l];
        if (!(abs_f(x - x_hat) * inv_step[l] <= 0.999f)) t[j][l] = hq_target(x, x_hat, inv_step[l], cfg.p_exp, true);
      }
}

HQQ_FN LaneF inv_step_lanes(LaneF D, float c) {  // hq_inv_step in every lane
  const LaneF a = abs_lanes(D);
  return (splat(1.0f) / select(a < splat(TINY), splat(TINY), a)) * splat(c);
}

// fit_sub in every lane.
template <class T>
HQQ_FN void fit_sub_lanes(const LaneSupers<T>& b, const Config& cfg, const LaneFields<T>& f, float c, LaneF* s,
                          LaneF* bo) {
  for (int g = 0; g < T::G; ++g) {
    const LaneF D = f.scale(g), B = f.offset(g);
    LaneF lv[T::S], t[T::S];
    sub_targets_lanes<T>(b, cfg, g, D, B, inv_lanes(D), inv_step_lanes(D, c), lv, t);
    const LaneF* wf = b.wf + g * T::S;
    if constexpr (T::AFFINE) {  // AffineSums::of
      LaneF wl[T::S], wt[T::S], wll[T::S], wlt[T::S];
      for (int j = 0; j < T::S; ++j) {
        wl[j] = wf[j] * lv[j];
        wt[j] = wf[j] * t[j];
        wll[j] = wl[j] * lv[j];
        wlt[j] = wl[j] * t[j];
      }
      const LaneF sw = torch_sum_lanes<T::S>(wf), sl = torch_sum_lanes<T::S>(wl), st = torch_sum_lanes<T::S>(wt),
                  sll = torch_sum_lanes<T::S>(wll), slt = torch_sum_lanes<T::S>(wlt);
      for (int l = 0; l < LANES; ++l)
        AffineSums{sw[l], sl[l], st[l], sll[l], slt[l]}.solve(D[l], B[l], true, true, s[g][l], bo[g][l]);
    } else {  // ScaleSums::of
      LaneF den[T::S], num[T::S];
      for (int j = 0; j < T::S; ++j) {
        const LaneF wl = wf[j] * lv[j];
        den[j] = wl * lv[j];
        num[j] = wl * t[j];
      }
      const LaneF sd = torch_sum_lanes<T::S>(den), sn = torch_sum_lanes<T::S>(num);
      for (int l = 0; l < LANES; ++l) s[g][l] = ScaleSums{sd[l], sn[l]}.solve(D[l]);
      bo[g] = splat(0.0f);
    }
  }
}

// pick_sub in every lane: each lane's own candidates, the current pair skipped per lane.
template <class T>
HQQ_FN void pick_sub_lanes(const LaneSupers<T>& b, int radius, LaneFields<T>& f, const LaneF* s, const LaneF* bo,
                           const LaneF* err) {
  const int n = 2 * radius + 1;
  for (int g = 0; g < T::G; ++g) {
    LaneF sc0, mn0, best_err = err[g], best_sc = f.sc[g], best_mn = f.mn[g];
    for (int l = 0; l < LANES; ++l) {
      sc0[l] = rint_even(ratio(s[g][l], f.d[l]));
      mn0[l] = T::AFFINE ? rint_even(ratio(-bo[g][l], f.dmin[l])) : 0.0f;
    }
    for (int ki = 0; ki < n; ++ki) {
      LaneF sc;
      for (int l = 0; l < LANES; ++l) sc[l] = clamp(sc0[l] + (float)nth_offset(ki), (float)T::SC_LO, (float)T::SC_HI);
      for (int kj = 0; kj < (T::AFFINE ? n : 1); ++kj) {
        LaneF mn;
        for (int l = 0; l < LANES; ++l) mn[l] = T::AFFINE ? clamp(mn0[l] + (float)nth_offset(kj), 0.0f, (float)T::MN_HI) : 0.0f;
        const LaneI current = (sc == f.sc[g]) & (mn == f.mn[g]);  // its error is err[g]: it cannot win
        bool all_current = true;
        for (int l = 0; l < LANES; ++l) all_current = all_current && current[l];
        if (all_current) continue;
        const LaneF e = sub_sse_lanes<T>(b, g, f.d * sc, T::AFFINE ? -(f.dmin * mn) : splat(0.0f));
        for (int l = 0; l < LANES; ++l)
          if (!current[l] && e[l] < best_err[l]) {
            best_err[l] = e[l];
            best_sc[l] = sc[l];
            best_mn[l] = mn[l];
          }
      }
    }
    f.sc[g] = best_sc;
    f.mn[g] = best_mn;
  }
}

// refit_super in every lane.
template <class T>
HQQ_FN void refit_super_lanes(const LaneSupers<T>& b, const Config& cfg, LaneFields<T>& f, float c) {
  LaneF a[256], t[256], lv[T::S];
  for (int g = 0; g < T::G; ++g) {
    const LaneF D = f.scale(g);
    sub_targets_lanes<T>(b, cfg, g, D, f.offset(g), inv_lanes(D), inv_step_lanes(D, c), lv, t + g * T::S);
    for (int j = 0; j < T::S; ++j) a[g * T::S + j] = f.sc[g] * lv[j];
  }
  if constexpr (T::AFFINE) {  // PairSums::of, c = -mn of the element's sub-block
    LaneF aa[256], cc[256], ac[256], at[256], ct[256];
    for (int e = 0; e < 256; ++e) {
      const LaneF ce = -f.mn[e / T::S], wa = b.wf[e] * a[e], wc = b.wf[e] * ce;
      aa[e] = wa * a[e];
      cc[e] = wc * ce;
      ac[e] = wa * ce;
      at[e] = wa * t[e];
      ct[e] = wc * t[e];
    }
    const LaneF saa = torch_sum_lanes<256>(aa), scc = torch_sum_lanes<256>(cc), sac = torch_sum_lanes<256>(ac),
                sat = torch_sum_lanes<256>(at), sct = torch_sum_lanes<256>(ct);
    for (int l = 0; l < LANES; ++l) {
      float d, dmin;
      PairSums{saa[l], scc[l], sac[l], sat[l], sct[l]}.solve(f.d[l], f.dmin[l], d, dmin);
      f.d[l] = snap_fp16(d);
      f.dmin[l] = snap_fp16(dmin);
    }
  } else {  // ScaleSums::of
    LaneF den[256], num[256];
    for (int e = 0; e < 256; ++e) {
      const LaneF wa = b.wf[e] * a[e];
      den[e] = wa * a[e];
      num[e] = wa * t[e];
    }
    const LaneF sd = torch_sum_lanes<256>(den), sn = torch_sum_lanes<256>(num);
    for (int l = 0; l < LANES; ++l) f.d[l] = snap_fp16(ScaleSums{sd[l], sn[l]}.solve(f.d[l]));
  }
}

// run_start in every lane where active[] (a lane stopped by patience is left alone).
template <class T>
HQQ_FN void run_start_lanes(const LaneSupers<T>& b, const Config& cfg, LaneFields<T> f, bool* active,
                            LaneBestK<T>& best) {
  LaneF err[T::G], s[T::G], bo[T::G];
  LanePatience patience;
  for (int it = 0;; ++it) {
    const LaneF obj = score_lanes<T>(b, f, err);
    bool better[LANES];
    for (int l = 0; l < LANES; ++l) {
      better[l] = obj[l] < best.obj[l];
      if (active[l] && better[l]) best.take(l, f.lane(l), obj[l], false);
    }
    if (it == cfg.iterations) break;
    const float c = cfg.hq_c[it];
    fit_sub_lanes<T>(b, cfg, f, c, s, bo);
    pick_sub_lanes<T>(b, cfg.radius, f, s, bo, err);
    refit_super_lanes<T>(b, cfg, f, c);
    if (cfg.patience && it > 0 && !patience.go_on(better, active, cfg.patience)) break;
  }
}

// solve_block for super-blocks i0 .. i0 + LANES - 1 of block-major rows (elem_stride 1).
template <class T>
HQQ_FN void solve_lanes(const Inputs& in, const Config& cfg, long long i0) {
  LaneSupers<T> b;
  LaneF level0[256];  // llama.cpp's codes as levels
  LaneFields<T> base;
  for (int l = 0; l < LANES; ++l) {
    const View v(in, i0 + l);
    for (int e = 0; e < 256; ++e) {
      b.x[e][l] = v.x[e];
      b.w[e][l] = v.w[e];
      b.wf[e][l] = v.wf[e];
      level0[e][l] = T::Grid::level(v.q0[e]);
    }
    const long long i = i0 + l;
    base.d[l] = in.base_d[i];
    base.dmin[l] = T::AFFINE ? in.base_m[i] : 0.0f;
    for (int g = 0; g < T::G; ++g) {
      base.sc[g][l] = (float)in.base_sc[i * T::G + g];
      base.mn[g][l] = T::AFFINE ? (float)in.base_mn[i * T::G + g] : 0.0f;
    }
  }
  LaneF base_err[T::G];
  for (int g = 0; g < T::G; ++g) {  // llama.cpp's answer, scored
    const LaneF D = base.scale(g), B = base.offset(g);
    LaneF t[T::S];
    for (int j = 0; j < T::S; ++j) {
      const int e = g * T::S + j;
      const LaneF y = D * level0[e];
      const LaneF r = b.x[e] - (T::AFFINE ? y + B : y);
      t[j] = r * r * b.w[e];
    }
    base_err[g] = torch_sum_lanes<T::S>(t);
  }
  const LaneF base_obj = torch_sum_lanes<T::G>(base_err);
  LaneBestK<T> best{base, {}, {}};
  for (int l = 0; l < LANES; ++l) {
    best.obj[l] = base_obj[l];
    best.base[l] = true;
  }
  bool active[LANES];
  for (int l = 0; l < LANES; ++l) active[l] = true;
  run_start_lanes<T>(b, cfg, base, active, best);  // start 0: llama.cpp's own fields

  // the extra starts (run_extra_starts): per sub-block min, range and first largest |x| in every lane
  LaneF lo[T::G], r[T::G], xm[T::G];
  for (int g = 0; g < T::G; ++g) {
    LaneF mn = b.x[g * T::S], mx = mn, am = mn;
    for (int j = 1; j < T::S; ++j) {
      const LaneF x = b.x[g * T::S + j];
      mn = select(x < mn, x, mn);
      mx = select(x > mx, x, mx);
      am = select(abs_lanes(x) > abs_lanes(am), x, am);
    }
    lo[g] = select(mn > splat(0.0f), splat(0.0f), mn);  // clamp_max(mn, 0)
    r[g] = mx - lo[g];
    xm[g] = am;
  }
  for (int k = 0; k < cfg.n_factors; ++k) {
    for (int side = 0; side < extra_sides<T>(); ++side) {
      LaneFields<T> start;
      for (int l = 0; l < LANES; ++l) {
        float s[T::G], bo[T::G];
        for (int g = 0; g < T::G; ++g) extra_start<T>(cfg, k, side, lo[g][l], r[g][l], xm[g][l], s[g], bo[g]);
        start.set(l, snap_fields<T>(s, bo));
        active[l] = true;
      }
      LaneBestK<T> start_best{base, {}, {}};  // every start's initial best: llama.cpp's block
      for (int l = 0; l < LANES; ++l) {
        start_best.obj[l] = base_obj[l];
        start_best.base[l] = true;
      }
      run_start_lanes<T>(b, cfg, start, active, start_best);
      for (int l = 0; l < LANES; ++l)  // argmin over starts: the first on ties
        if (start_best.obj[l] < best.obj[l]) best.take(l, start_best.f.lane(l), start_best.obj[l], start_best.base[l]);
    }
  }
  for (int l = 0; l < LANES; ++l) write_block<T>(in, View(in, i0 + l), i0 + l, Best<T>{best.f.lane(l), best.obj[l], best.base[l]});
}
#endif

}  // namespace hqq

HQQ_BLOCK_ENTRY(hqq_q4_k, hqq::Q4_K)
HQQ_BLOCK_ENTRY(hqq_q5_k, hqq::Q5_K)
HQQ_BLOCK_ENTRY(hqq_q6_k, hqq::Q6_K)
HQQ_BLOCK_ENTRY(hqq_q3_k, hqq::Q3_K)
HQQ_BLOCK_ENTRY(hqq_q2_k, hqq::Q2_K)
HQQ_BLOCK_ENTRY(hqq_iq4_xs, hqq::IQ4_XS)
