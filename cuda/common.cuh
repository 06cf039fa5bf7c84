// cuda/common.cuh -- what every fused HQQ kernel shares: portability, fp16 snapping, code grids, the
// half-quadratic target and the weighted least-squares fits, each mirroring one function of
// hqq2gguf/optimize/core.py operation by operation, in float32.
//
// One source, three compilers:
//   * NVRTC at run time (hqq2gguf/cuda/loader.py inlines this file into each kernel family's source);
//   * nvcc, for CI's compile check:   nvcc -std=c++17 -O3 -arch=sm_90 --fmad=false -c cuda/<family>.cu
//   * a plain C++17 compiler, for the CPU emulation the tests run without a GPU
//     (hqq2gguf/cuda/emulate.py):    c++ -std=c++17 -O2 -ffp-contract=off -shared -fPIC -x c++ cuda/<family>.cu
// The device part includes no header (NVRTC has no standard library); only the host branch includes <cmath>.
//
// Arithmetic contract: every float32 operation of the torch solver, in its order, with no fused
// multiply-add (--fmad=false: torch's CPU kernels round the product before the add), and every sum in the
// order torch's CPU sum kernel adds (torch_sum). What may still differ from torch, and so why bit-identity is
// not guaranteed (see cuda/README.md): powf (Sleef on torch's CPU, CUDA's powf here; it only matters where
// the lp shrinkage is active), and a reference run under another CPU capability than HQQ_SUM_LANES says.
#pragma once

// Threads per CTA of every launch (hqq2gguf/cuda/launch.py THREADS_PER_CTA, checked equal by the tests), and
// the CTAs per SM the register allocation must leave room for. 1 keeps ptxas's own allocation (up to 255
// registers, few spills: cuda/README.md has the numbers); 2 caps it at 168 with hundreds of bytes of spills
// for the K-quants. Which is faster is for a GPU to time (-DHQQ_MIN_CTAS_PER_SM=2).
#define HQQ_THREADS_PER_CTA 128
#ifndef HQQ_MIN_CTAS_PER_SM
#define HQQ_MIN_CTAS_PER_SM 1
#endif

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define HQQ_DEVICE_BUILD 1
#define HQQ_FN __device__ __forceinline__
#define HQQ_ENTRY extern "C" __global__ void __launch_bounds__(HQQ_THREADS_PER_CTA, HQQ_MIN_CTAS_PER_SM)
#define HQQ_UNROLL _Pragma("unroll")
// A grid-stride loop: one thread per block (or super-block).
#define HQQ_FOR_EACH_BLOCK(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
#else
#include <cmath>
#include <cstring>
#if HQQ_EMULATE_FTZ
#include <xmmintrin.h>
#endif
#define HQQ_DEVICE_BUILD 0
#define HQQ_FN inline
#define HQQ_ENTRY extern "C" void
#define HQQ_UNROLL
#define HQQ_FOR_EACH_BLOCK(i, n) for (long long i = 0; i < (n); ++i)
#endif

namespace hqq {

constexpr float TINY = 1e-30f;    // core.TINY
constexpr float FP16_MAX = 65504.0f;

// ---------------------------------------------------------------- scalar math (same results on both sides)

#if HQQ_DEVICE_BUILD
HQQ_FN float rint_even(float v) { return rintf(v); }  // torch.round: half to even
HQQ_FN float pow_f(float b, float e) { return e == -1.0f ? 1.0f / b : powf(b, e); }  // see pow_f below
HQQ_FN float abs_f(float v) { return fabsf(v); }
HQQ_FN unsigned int float_bits(float v) { return __float_as_uint(v); }
HQQ_FN float bits_float(unsigned int u) { return __uint_as_float(u); }
#else
HQQ_FN float rint_even(float v) { return std::nearbyint(v); }
// torch's CPU pow with the scalar exponent -1 (p = 1) is an exact reciprocal (aten pow_tensor_scalar), not pow.
HQQ_FN float pow_f(float b, float e) { return e == -1.0f ? 1.0f / b : std::pow(b, e); }
HQQ_FN float abs_f(float v) { return std::fabs(v); }
HQQ_FN unsigned int float_bits(float v) { unsigned int u; std::memcpy(&u, &v, 4); return u; }
HQQ_FN float bits_float(unsigned int u) { float v; std::memcpy(&v, &u, 4); return v; }
#endif

HQQ_FN float clamp_min(float v, float lo) { return v < lo ? lo : v; }  // torch clamp_min
HQQ_FN float clamp_max(float v, float hi) { return v > hi ? hi : v; }
HQQ_FN float clamp(float v, float lo, float hi) { return clamp_max(clamp_min(v, lo), hi); }

// ---------------------------------------------------------------- fp16

// The fp16 bits nearest v, saturated at +-65504: torch's v.clamp(-65504, 65504).to(float16) (core.fp16),
// round to nearest even, subnormals included.
HQQ_FN unsigned short fp16_bits(float v) {
  const unsigned int u = float_bits(clamp(v, -FP16_MAX, FP16_MAX));
  const unsigned int sign = (u >> 16) & 0x8000u;
  unsigned int a = u & 0x7fffffffu;
  if (a >= 0x38800000u) {                 // |v| >= 2^-14: a normal fp16
    a += 0x0fffu + ((a >> 13) & 1u);      // round the 13 dropped mantissa bits, ties to even
    return (unsigned short)(sign | (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu));
  }
  // fp16 subnormal or zero: a multiple of 2^-24 (the scaling by 2^24 is exact)
  return (unsigned short)(sign | (unsigned int)rint_even(bits_float(a) * 16777216.0f));
}

HQQ_FN float fp16_value(unsigned short h) {
  const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
  const unsigned int e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) return bits_float(sign | float_bits((float)m * 5.9604644775390625e-8f));  // m * 2^-24
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));  // e == 31 cannot occur (saturated)
}

// core.fp16: the nearest fp16 value, back as float32.
HQQ_FN float snap_fp16(float v) { return fp16_value(fp16_bits(v)); }

// ---------------------------------------------------------------- code grids (core.Grid)

// inv_scale of core.Grid.codes: 1/scale, 0 for a zero scale (every element then takes the level nearest 0).
HQQ_FN float inv_of(float scale) { return scale != 0.0f ? 1.0f / scale : 0.0f; }

// Integer levels QMIN..QMAX (the code is the level).
template <int QMIN_, int QMAX_>
struct IntGrid {
  static constexpr int QMIN = QMIN_, QMAX = QMAX_;
  static constexpr float LO = (float)QMIN_, HI = (float)QMAX_;  // grid.lo, grid.hi
  HQQ_FN static float level(int q) { return (float)q; }
  // v.round_().clamp_(qmin, qmax)
  HQQ_FN static int nearest(float v) { return (int)clamp(rint_even(v), LO, HI); }
};

// kvalues_iq4nl (ggml-common.h): the code is an index 0..15 into -127 -104 -83 -65 -49 -35 -22 -10 1 13 25
// 38 53 69 89 113. Branch-free: a lane never diverges on its code.
struct Iq4Grid {
  static constexpr int QMIN = 0, QMAX = 15;
  static constexpr float LO = -127.0f, HI = 113.0f;
#if HQQ_DEVICE_BUILD  // registers only: compare chains (a table indexed at run time would live in local memory)
  HQQ_FN static float level(int q) {  // -127 plus the steps between consecutive levels below q
    return (float)(-127 + 23 * (q > 0) + 21 * (q > 1) + 18 * (q > 2) + 16 * (q > 3) + 14 * (q > 4) + 13 * (q > 5)
                   + 12 * (q > 6) + 11 * (q > 7) + 12 * (q > 8) + 12 * (q > 9) + 13 * (q > 10) + 15 * (q > 11)
                   + 16 * (q > 12) + 20 * (q > 13) + 24 * (q > 14));
  }
  // torch.searchsorted(mids, v), side left: the number of midpoints strictly below v.
  HQQ_FN static int nearest(float v) {
    return (v > -115.5f) + (v > -93.5f) + (v > -74.0f) + (v > -57.0f) + (v > -42.0f) + (v > -28.5f) + (v > -16.0f)
           + (v > -4.5f) + (v > 7.0f) + (v > 19.0f) + (v > 31.5f) + (v > 45.5f) + (v > 61.0f) + (v > 79.0f)
           + (v > 101.0f);
  }
#else  // the CPU: the same answers from tables, four compares instead of fifteen
  HQQ_FN static float level(int q) {
    static constexpr float kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    return kLevels[q];
  }
  HQQ_FN static int nearest(float v) {  // binary search: the count of midpoints < v (0 for NaN, as above)
    static constexpr float kMids[16] = {-115.5f, -93.5f, -74.0f, -57.0f, -42.0f, -28.5f, -16.0f, -4.5f,
                                        7.0f,    19.0f,  31.5f,  45.5f,  61.0f,  79.0f,  101.0f, 1e30f};
    int i = (v > kMids[7]) ? 8 : 0;
    i += (v > kMids[i + 3]) ? 4 : 0;
    i += (v > kMids[i + 1]) ? 2 : 0;
    i += (v > kMids[i]) ? 1 : 0;
    return i;
  }
#endif
};

template <class Grid, bool AFFINE>
HQQ_FN int nearest_code(float x, float inv_scale, float offset) {
  return Grid::nearest(AFFINE ? (x - offset) * inv_scale : x * inv_scale);
}

// ---------------------------------------------------------------- the half-quadratic step (core.hq_target)

// The per-group factor of hq_target: c / max(|step|, TINY), as torch evaluates it (Tensor.__rtruediv__ is
// reciprocal(t) * c); c = beta ** (1 / (2 - p)) comes from the host, one float32 per iteration.
HQQ_FN float hq_inv_step(float step, float c) { return (1.0f / clamp_min(abs_f(step), TINY)) * c; }

// x - e * max(1 - max(|e| * inv_step, 1e-12) ** (p - 2), 0), e = x - x_hat; x itself without shrinkage.
HQQ_FN float hq_target(float x, float x_hat, float inv_step, float p_exp, bool shrink) {
  if (!shrink) return x;
  const float e = x - x_hat;
  const float a = abs_f(e) * inv_step;
  if (a <= 0.999f) return x;  // (a)**p_exp >= 1: not shrunk (core.hq_target's _SHRINK_FROM, the same test)
  const float f = pow_f(clamp_min(a, 1e-12f), p_exp);
  return x - e * clamp_min(1.0f - f, 0.0f);
}

// ---------------------------------------------------------------- sums in torch's order

// Lanes of the Vectorized<float> torch's CPU sum kernel runs with where the reference runs (8 for torch 2.13 on
// x86, even under AVX512). hqq2gguf/cuda/sum_order.py measures it and the loader passes -DHQQ_SUM_LANES=<n>.
#ifndef HQQ_SUM_LANES
#define HQQ_SUM_LANES 8
#endif

// sum_{e < N} f(e), the float32 additions in the order torch's CPU sum over a contiguous last axis makes
// them (aten/src/ATen/native/cpu/SumKernel.cpp, cascade_sum): per vector lane l, four ILP partials over
// vectors 4i + k, the leftover vectors into partial 0, ((p0 + p1) + p2) + p3, then the lanes added in order
// after any scalar tail; rows shorter than a vector take row_sum's four scalar partials. Every term is a pure
// function of e, so visiting the elements in this order costs nothing and makes each sum bit-identical.
// (The multi-level cascade only starts at 16 vectors per partial, far beyond N <= 256.)
template <int N, class Acc, class F>
HQQ_FN Acc torch_sum(F f) {
  constexpr int V = HQQ_SUM_LANES;
  Acc total{};
  if constexpr (N >= V) {
    constexpr int nvec = N / V, ilp = nvec / 4;
    for (int e = nvec * V; e < N; ++e) total += f(e);
    for (int l = 0; l < V; ++l) {
      Acc p0{}, p1{}, p2{}, p3{};
      for (int i = 0; i < ilp; ++i) {
        p0 += f((4 * i + 0) * V + l);
        p1 += f((4 * i + 1) * V + l);
        p2 += f((4 * i + 2) * V + l);
        p3 += f((4 * i + 3) * V + l);
      }
      for (int m = 4 * ilp; m < nvec; ++m) p0 += f(m * V + l);
      total += ((p0 + p1) + p2) + p3;
    }
  } else {
    constexpr int ilp = N / 4;
    Acc p0{}, p1{}, p2{}, p3{};
    for (int i = 0; i < ilp; ++i) {
      p0 += f(4 * i + 0);
      p1 += f(4 * i + 1);
      p2 += f(4 * i + 2);
      p3 += f(4 * i + 3);
    }
    for (int e = 4 * ilp; e < N; ++e) p0 += f(e);
    total += ((p0 + p1) + p2) + p3;
  }
  return total;
}

#if !HQQ_DEVICE_BUILD
// torch_sum<N, float> of the terms t[0..N) already in an array (the CPU build): the same additions in the same
// order -- lane l's four partials p0..p3 and their sum, then `total` over the lanes in order -- written as loops
// over the lanes, which the compiler turns into vector adds.
template <int N>
HQQ_FN float torch_sum_of(const float* t) {
  constexpr int V = HQQ_SUM_LANES;
  if constexpr (N >= V) {
    constexpr int nvec = N / V, ilp = nvec / 4;
    float total = 0.0f;
    for (int e = nvec * V; e < N; ++e) total += t[e];
    float p0[V] = {}, p1[V] = {}, p2[V] = {}, p3[V] = {};
    for (int i = 0; i < ilp; ++i)
      for (int l = 0; l < V; ++l) {
        p0[l] += t[(4 * i + 0) * V + l];
        p1[l] += t[(4 * i + 1) * V + l];
        p2[l] += t[(4 * i + 2) * V + l];
        p3[l] += t[(4 * i + 3) * V + l];
      }
    for (int m = 4 * ilp; m < nvec; ++m)
      for (int l = 0; l < V; ++l) p0[l] += t[m * V + l];
    for (int l = 0; l < V; ++l) total += ((p0[l] + p1[l]) + p2[l]) + p3[l];
    return total;
  } else {
    return torch_sum<N, float>([&](int e) { return t[e]; });
  }
}
#endif

// ---------------------------------------------------------------- weighted least squares (core.fit_*)

// The sums of core.fit_scale (t ~ s * lv): one term per element, added in torch's order by torch_sum.
struct ScaleSums {
  float den, num;  // sum (w*lv)*lv, sum (w*lv)*t
  HQQ_FN static ScaleSums term(float lv, float t, float w) {
    const float wl = w * lv;
    return {wl * lv, wl * t};
  }
  HQQ_FN ScaleSums operator+(const ScaleSums& o) const { return {den + o.den, num + o.num}; }
  HQQ_FN ScaleSums& operator+=(const ScaleSums& o) { return *this = *this + o; }
  HQQ_FN float solve(float prev) const { return den > TINY ? num / den : prev; }
#if !HQQ_DEVICE_BUILD
  // torch_sum<N, ScaleSums> of term(lv[e], t[e], w[e]): each component is its own torch-order sum, so the terms
  // go to arrays first (vectorized) and each array is summed by torch_sum_of.
  template <int N>
  HQQ_FN static ScaleSums of(const float* lv, const float* t, const float* w) {
    float den[N], num[N];
    for (int e = 0; e < N; ++e) {
      const float wl = w[e] * lv[e];
      den[e] = wl * lv[e];
      num[e] = wl * t[e];
    }
    return {torch_sum_of<N>(den), torch_sum_of<N>(num)};
  }
#endif
};

// core.fit_affine: t ~ s * lv + b; with the K-quant constraints b <= 0 (refit s with b = 0) and s >= 0
// (keep the previous pair).
struct AffineSums {
  float sw, sl, st, sll, slt;
  HQQ_FN static AffineSums term(float lv, float t, float w) {
    const float wl = w * lv;
    return {w, wl, w * t, wl * lv, wl * t};
  }
  HQQ_FN AffineSums operator+(const AffineSums& o) const {
    return {sw + o.sw, sl + o.sl, st + o.st, sll + o.sll, slt + o.slt};
  }
  HQQ_FN AffineSums& operator+=(const AffineSums& o) { return *this = *this + o; }
#if !HQQ_DEVICE_BUILD
  template <int N>  // torch_sum<N, AffineSums> of term(lv[e], t[e], w[e]), as ScaleSums::of
  HQQ_FN static AffineSums of(const float* lv, const float* t, const float* w) {
    float a[N], b[N], c[N], d[N];
    for (int e = 0; e < N; ++e) {
      const float wl = w[e] * lv[e];
      a[e] = wl;
      b[e] = w[e] * t[e];
      c[e] = wl * lv[e];
      d[e] = wl * t[e];
    }
    return {torch_sum_of<N>(w), torch_sum_of<N>(a), torch_sum_of<N>(b), torch_sum_of<N>(c), torch_sum_of<N>(d)};
  }
#endif
  HQQ_FN void solve(float prev_s, float prev_b, bool offset_nonpos, bool scale_nonneg, float& s, float& b) const {
    const float det = sll * sw - sl * sl;
    const bool ok = det > 1e-6f * clamp_min(sll * sw, TINY);
    s = ok ? (slt * sw - sl * st) / det : prev_s;
    b = ok ? (sll * st - sl * slt) / det : prev_b;
    if (offset_nonpos && b > 0.0f) {
      s = sll > TINY ? slt / sll : prev_s;
      b = 0.0f;
    }
    if (scale_nonneg && s < 0.0f) {
      s = prev_s;
      b = prev_b;
    }
  }
};

// kquant._fit_pair: t ~ u * a + v * c with u, v >= 0 (the previous pair where not).
struct PairSums {
  float saa, scc, sac, sat, sct;
  HQQ_FN static PairSums term(float a, float c, float t, float w) {
    const float wa = w * a, wc = w * c;
    return {wa * a, wc * c, wa * c, wa * t, wc * t};
  }
  HQQ_FN PairSums operator+(const PairSums& o) const {
    return {saa + o.saa, scc + o.scc, sac + o.sac, sat + o.sat, sct + o.sct};
  }
  HQQ_FN PairSums& operator+=(const PairSums& o) { return *this = *this + o; }
#if !HQQ_DEVICE_BUILD
  template <int N>  // torch_sum<N, PairSums> of term(a[e], c[e], t[e], w[e]), as ScaleSums::of
  HQQ_FN static PairSums of(const float* a, const float* c, const float* t, const float* w) {
    float aa[N], cc[N], ac[N], at[N], ct[N];
    for (int e = 0; e < N; ++e) {
      const float wa = w[e] * a[e], wc = w[e] * c[e];
      aa[e] = wa * a[e];
      cc[e] = wc * c[e];
      ac[e] = wa * c[e];
      at[e] = wa * t[e];
      ct[e] = wc * t[e];
    }
    return {torch_sum_of<N>(aa), torch_sum_of<N>(cc), torch_sum_of<N>(ac), torch_sum_of<N>(at), torch_sum_of<N>(ct)};
  }
#endif
  HQQ_FN void solve(float prev_u, float prev_v, float& u, float& v) const {
    const float det = saa * scc - sac * sac;
    bool ok = det > 1e-6f * clamp_min(saa * scc, TINY);
    const float nu = ok ? (sat * scc - sac * sct) / det : 0.0f;
    const float nv = ok ? (saa * sct - sac * sat) / det : 0.0f;
    ok = ok && nu >= 0.0f && nv >= 0.0f;
    u = ok ? nu : prev_u;
    v = ok ? nv : prev_v;
  }
};

// _ratio of kquant.py: v / d, 0 where d is 0.
HQQ_FN float ratio(float v, float d) { return d != 0.0f ? v / d : 0.0f; }

// ---------------------------------------------------------------- what a launch reads

// The solver's settings (SolverConfig), as the host turns them into plain numbers.
struct Config {
  int iterations;            // HQ iterations (each block scores iterations + 1 iterates)
  int patience;              // stop a (start, block) after this many iterations without improvement (0: never)
  bool shrink;               // p < 2
  float p_exp;               // float32(p - 2)
  const float* hq_c;         // [iterations]: float32(beta_it ** (1 / (2 - p))), beta_it = beta0 * kappa**it
  int n_factors;             // extra starts: range factors (block types) or super-range factors (K-quants)
  const float* factors;      // [n_factors] float32(f)
  const float* one_minus;    // [n_factors] float32(1 - f), rounded once from the double as torch does
  int radius;                // K-quants: integer sub-scales tried around the rounded value, +-radius
};

// One block's inputs. Element e of block i sits at [e * elem_stride + i * block_stride] in x, w, wf and
// base_q: the CUDA path passes element-major arrays (a warp's loads of one element are contiguous), the CPU
// emulation numpy's row-major blocks. Per-block fields: base_d, base_m [i]; base_sc, base_mn [i * n_sub + g].
struct Inputs {
  const float* x;              // values
  const float* w;              // objective weights (float32 of the float64 element weights)
  const float* wf;             // fitting weights: w + 1e-4 * mean(w) + TINY
  const signed char* base_q;   // llama.cpp's codes (level, or codebook index)
  long long elem_stride, block_stride;
  const float* base_d;         // llama.cpp's fp16 scale (as float32)
  const float* base_m;         // its fp16 min (Q4_1/Q5_1) or dmin (Q2_K/Q4_K/Q5_K); unused otherwise
  const signed char* base_sc;  // its sub-scales (K-quants)
  const signed char* base_mn;  // its sub-block mins (affine K-quants)
  unsigned char* out;          // [n_blocks * type_size] ggml block bytes
  float* out_obj;              // [n_blocks] float32 objective of the block written
};

// Element e of one block.
struct View {
  const float *x, *w, *wf;
  const signed char* q0;
  long long es;
  HQQ_FN View(const Inputs& in, long long i)
      : x(in.x + i * in.block_stride), w(in.w + i * in.block_stride), wf(in.wf + i * in.block_stride),
        q0(in.base_q + i * in.block_stride), es(in.elem_stride) {}
  HQQ_FN float X(int e) const { return x[e * es]; }
  HQQ_FN float W(int e) const { return w[e * es]; }
  HQQ_FN float WF(int e) const { return wf[e * es]; }
  HQQ_FN int Q0(int e) const { return q0[e * es]; }
};

// The order torch's _pick_sub tries offsets in: 0, -1, 1, -2, 2, ...
HQQ_FN int nth_offset(int k) { return (k & 1) ? -((k + 1) >> 1) : (k >> 1); }

}  // namespace hqq

// Every kernel entry point has the same parameters (hqq2gguf/cuda/solve_cuda.py passes them in this order).
#define HQQ_KERNEL_PARAMS                                                                                    \
  const float *x, const float *w, const float *wf, const signed char *base_q, long long elem_stride,         \
      long long block_stride, long long n_blocks, const float *base_d, const float *base_m,                  \
      const signed char *base_sc, const signed char *base_mn, int iterations, int patience, int shrink,      \
      float p_exp, const float *hq_c, int n_factors, const float *factors, const float *one_minus_factors,   \
      int radius, unsigned char *out, float *out_obj

// Denormals. CuPy compiles every RawModule with -ftz=true (cupy/cuda/compiler.py appends it after the caller's
// options, and NVRTC honours the last one), so on the GPU float32 denormal inputs and results are flushed to zero.
// The CPU emulation does the same with SSE's DAZ and FTZ bits (-DHQQ_EMULATE_FTZ=1, hqq2gguf/cuda/emulate.py),
// set for the duration of an entry point and restored after.
#if !HQQ_DEVICE_BUILD && HQQ_EMULATE_FTZ
namespace hqq {
struct FtzScope {
  unsigned int saved = _mm_getcsr();
  FtzScope() { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FtzScope() { _mm_setcsr(saved); }
};
}  // namespace hqq
#define HQQ_FTZ_SCOPE const hqq::FtzScope hqq_ftz_scope
#else
#define HQQ_FTZ_SCOPE (void)0
#endif

// extern "C" entry NAME running SOLVE(inputs, config, block index) for every block.
#define HQQ_DEFINE_ENTRY(NAME, SOLVE) HQQ_DEFINE_ENTRY_BODY(NAME, HQQ_FOR_EACH_BLOCK(i, n_blocks) SOLVE(in, cfg, i))
// extern "C" entry NAME running SOLVE_ALL(inputs, config, n_blocks) once (the CPU build's multi-block solvers).
#define HQQ_DEFINE_ENTRY_ALL(NAME, SOLVE_ALL) HQQ_DEFINE_ENTRY_BODY(NAME, SOLVE_ALL(in, cfg, n_blocks))
// extern "C" entry NAME for block type T: hqq::solve_block<T> per block (one per thread) on the GPU; on the CPU
// hqq::solve_blocks<T> over all of them (several blocks per step in vector lanes, cuda/lanes.cuh).
#if HQQ_DEVICE_BUILD
#define HQQ_BLOCK_ENTRY(NAME, T) HQQ_DEFINE_ENTRY(NAME, hqq::solve_block<T>)
#else
#define HQQ_BLOCK_ENTRY(NAME, T) HQQ_DEFINE_ENTRY_ALL(NAME, hqq::solve_blocks<T>)
#endif
#define HQQ_DEFINE_ENTRY_BODY(NAME, RUN)                                                                     \
  HQQ_ENTRY NAME(HQQ_KERNEL_PARAMS) {                                                                        \
    const hqq::Inputs in{x, w, wf, base_q, elem_stride, block_stride, base_d, base_m, base_sc, base_mn, out, \
                         out_obj};                                                                           \
    const hqq::Config cfg{iterations, patience, shrink != 0, p_exp, hq_c, n_factors, factors,                \
                          one_minus_factors, radius};                                                        \
    HQQ_FTZ_SCOPE;                                                                                           \
    RUN;                                                                                                     \
  }
