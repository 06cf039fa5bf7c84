// cuda/recheck.cu -- the CPU solver's float64 re-check of a row part, compiled by the host C++ compiler only
// (hqq2gguf/cuda/solve_cpu.py; the GPU path keeps hqq2gguf/cuda/host.py's numpy re-check).
//
// The torch path ends every part the same way (hqq2gguf/cuda/host.py finish, optimize/solver.py): decode the
// solver's blocks and llama.cpp's, score both per block in float64 -- block_objective, sum w * (x - v)**2 with
// numpy's .sum(axis=1) -- and keep llama.cpp's block wherever ours is not at least as good. Done in numpy that
// costs several float64 passes over the part, as much time as the kernel's own loop for the one-scale types;
// here it is one pass, with the same per-block sums bit for bit (numpy's pairwise order, np_sum below), so the
// same blocks are kept. The decoded values come from ggml's to_float (hqq2gguf/ggml_ref.py), which pack.decode
// equals bit for bit.
//
// Entry point: hqq_recheck (below). nvcc compiles this file too (scripts/compile_cuda.sh): plain host code.
#include <cmath>

namespace hqq {

// numpy's pairwise_sum (numpy/_core/src/umath/loops_utils.h.src) of term(0..n-1): what .sum(axis=1) of a
// C-contiguous float64 array does to each row (below 8 terms in order; up to 128, eight accumulators combined
// as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)) then the rest in order; above, split at half rounded down to 8).
template <class F>
inline double np_sum(long long lo, long long n, const F& term) {
  if (n < 8) {
    double res = 0.0;
    for (long long i = 0; i < n; ++i) res += term(lo + i);
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = term(lo + j);
    long long i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += term(lo + i + j);
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += term(lo + i);
    return res;
  }
  long long n2 = n / 2;
  n2 -= n2 % 8;
  return np_sum(lo, n2, term) + np_sum(lo + n2, n - n2, term);
}

}  // namespace hqq

// x (n_blocks, B) float32 values; w (n_blocks, B) float64 weights or null (all ones); ours, base (n_blocks, B)
// float32 decoded blocks. Writes take_base[i] = 1 where ours is not at least as good as base in float64 (NaN
// included), and sums[4] += (objective, baseline objective, squared error, squared norm) of the kept blocks.
// Returns the number of blocks whose decoded values are not all finite (the kernel never writes one: a bug).
extern "C" long long hqq_recheck(const float* x, const double* w, const float* ours, const float* base,
                                 long long n_blocks, int B, unsigned char* take_base, double* sums) {
  long long non_finite = 0;
  for (long long i = 0; i < n_blocks; ++i) {
    const float* xb = x + i * B;
    const float* ob = ours + i * B;
    const float* bb = base + i * B;
    const double* wb = w ? w + i * B : nullptr;
    auto objective = [&](const float* v) {
      return hqq::np_sum(0, B, [&](long long e) {
        const double r = (double)xb[e] - (double)v[e];
        return wb ? wb[e] * r * r : r * r;  // numpy: (w * e) * e
      });
    };
    const double o = objective(ob), b = objective(bb);
    bool finite = true;
    for (int e = 0; e < B; ++e) finite = finite && std::isfinite(ob[e]);
    non_finite += !finite;
    const bool take = !(o <= b);
    take_base[i] = take;
    const float* kept = take ? bb : ob;
    double sq_error = 0.0, sq_norm = 0.0;
    for (int e = 0; e < B; ++e) {
      const double r = (double)xb[e] - (double)kept[e];
      sq_error += r * r;
      sq_norm += (double)xb[e] * (double)xb[e];
    }
    sums[0] += take ? b : o;
    sums[1] += b;
    sums[2] += sq_error;
    sums[3] += sq_norm;
  }
  return non_finite;
}
