// cuda/lanes.cuh -- the CPU build only: several blocks side by side, one per vector lane (GCC/Clang vector
// extensions), for block_scale.cu's and kquant.cu's multi-block solvers. Each lane runs the one-block code's float32
// operations in its order, so a lane's block gets exactly the bytes of the one-block code (the tests hold both to
// the torch solver's); only the control flow differs: masks where a lane's block stops or skips and others go on.
#pragma once
#include "common.cuh"
#if !HQQ_DEVICE_BUILD

namespace hqq {

#if defined(__AVX__)  // one vector register of floats
constexpr int LANES = 8;
#else
constexpr int LANES = 4;
#endif
typedef float LaneF __attribute__((vector_size(4 * LANES)));
typedef int LaneI __attribute__((vector_size(4 * LANES)));

// Every operand a vector (GCC and Clang differ on mixing in scalars).
HQQ_FN LaneF splat(float v) {
  LaneF r;
  for (int l = 0; l < LANES; ++l) r[l] = v;
  return r;
}
HQQ_FN LaneI splat_i(int v) {
  LaneI r;
  for (int l = 0; l < LANES; ++l) r[l] = v;
  return r;
}
HQQ_FN LaneF select(LaneI mask, LaneF a, LaneF b) { return (LaneF)((mask & (LaneI)a) | (~mask & (LaneI)b)); }
HQQ_FN LaneF abs_lanes(LaneF v) { return (LaneF)((LaneI)v & splat_i(0x7fffffff)); }  // fabs: the sign bit cleared
HQQ_FN LaneF clamp_lanes(LaneF v, float lo, float hi) {  // clamp(): NaN stays NaN
  v = select(v < splat(lo), splat(lo), v);
  return select(v > splat(hi), splat(hi), v);
}
// Round half to even for |v| <= 2^22 (the default rounding mode does it on the add): rint_even of the code
// grids' clamped values. rint_even(clamp(v)) == clamp(rint_even(v)) for integer bounds, NaN included.
HQQ_FN LaneF rint_small(LaneF v) { return (v + splat(12582912.0f)) - splat(12582912.0f); }
HQQ_FN bool any(LaneI mask) {
  int a = 0;
  for (int l = 0; l < LANES; ++l) a |= mask[l];
  return a != 0;
}

// Grid::level(Grid::nearest(v)) for every lane: IntGrid's clamped rounding, Iq4Grid's compare chains. The int
// conversion stays, for NaN's sake ((float)(int)NaN as the scalar code has it).
template <class G>
struct LaneGrid;
template <int QMIN, int QMAX>
struct LaneGrid<IntGrid<QMIN, QMAX>> {
  HQQ_FN static LaneF level_of_nearest(LaneF v) {
    return __builtin_convertvector(__builtin_convertvector(rint_small(clamp_lanes(v, QMIN, QMAX)), LaneI), LaneF);
  }
};
template <>
struct LaneGrid<Iq4Grid> {
  HQQ_FN static LaneF level_of_nearest(LaneF v) {
    // Iq4Grid's device build: the midpoints of nearest's chain and the steps of level's
    constexpr float mids[15] = {-115.5f, -93.5f, -74.0f, -57.0f, -42.0f, -28.5f, -16.0f, -4.5f,
                                7.0f,    19.0f,  31.5f,  45.5f,  61.0f,  79.0f,  101.0f};
    constexpr int steps[15] = {23, 21, 18, 16, 14, 13, 12, 11, 12, 12, 13, 15, 16, 20, 24};
    LaneI level = splat_i(-127);  // a true compare is -1: each midpoint below v adds its step
    for (int k = 0; k < 15; ++k) level -= (v > splat(mids[k])) * splat_i(steps[k]);
    return __builtin_convertvector(level, LaneF);
  }
};

// torch_sum<N, float> of t[e] in every lane: the same additions in the same order.
template <int N>
HQQ_FN LaneF torch_sum_lanes(const LaneF* t) {
  constexpr int V = HQQ_SUM_LANES;
  LaneF total = splat(0.0f);
  auto partials = [&](int base, int stride, int n) {  // four partials over base + stride * (4i + k), the rest in p0
    LaneF p0 = splat(0.0f), p1 = p0, p2 = p0, p3 = p0;
    for (int i = 0; i < n / 4; ++i) {
      p0 += t[base + (4 * i + 0) * stride];
      p1 += t[base + (4 * i + 1) * stride];
      p2 += t[base + (4 * i + 2) * stride];
      p3 += t[base + (4 * i + 3) * stride];
    }
    for (int m = 4 * (n / 4); m < n; ++m) p0 += t[base + m * stride];
    total += ((p0 + p1) + p2) + p3;
  };
  if constexpr (N >= V) {
    constexpr int nvec = N / V;
    for (int e = nvec * V; e < N; ++e) total += t[e];
    for (int k = 0; k < V; ++k) partials(k, V, nvec);
  } else {
    partials(0, 1, N);
  }
  return total;
}

// run_start's patience in every lane: a lane stops after `patience` iterations in a row without improvement (its
// `active` flag cleared); go_on is false once no lane is left.
struct LanePatience {
  int stall[LANES] = {};
  HQQ_FN bool go_on(const bool* better, bool* active, int patience) {
    bool still = false;
    for (int l = 0; l < LANES; ++l) {
      stall[l] = better[l] ? 0 : stall[l] + 1;
      active[l] = active[l] && stall[l] < patience;
      still = still || active[l];
    }
    return still;
  }
};

// Each kernel file's one-block and LANES-block solvers (defined there).
template <class T>
HQQ_FN void solve_block(const Inputs& in, const Config& cfg, long long i);
template <class T>
HQQ_FN void solve_lanes(const Inputs& in, const Config& cfg, long long i0);

// Every block: LANES at a time where the rows are block-major (elem_stride 1), the rest one by one.
template <class T>
HQQ_FN void solve_blocks(const Inputs& in, const Config& cfg, long long n_blocks) {
  long long i = 0;
  if (in.elem_stride == 1)
    for (; i + LANES <= n_blocks; i += LANES) solve_lanes<T>(in, cfg, i);
  for (; i < n_blocks; ++i) solve_block<T>(in, cfg, i);
}

}  // namespace hqq

#endif
