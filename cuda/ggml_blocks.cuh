// cuda/ggml_blocks.cuh -- ggml block writers: finished fields -> the exact bytes of one block.
//
// Each writer is the device twin of one packer of hqq2gguf/pack/ (same layout diagrams there) and
// takes what the solver holds: fp16 scales as float32 (already snapped, so the conversion is exact),
// integer sub-scales/mins, and the codes q as the block stores them (levels, or IQ4 codebook indices).
// Included by the kernel families after common.cuh; no header of its own.
#pragma once

namespace hqq {

HQQ_FN void put_fp16(unsigned char* o, float v) {
  const unsigned short h = fp16_bits(v);
  o[0] = (unsigned char)(h & 0xffu);
  o[1] = (unsigned char)(h >> 8);
}

// ---------------------------------------------------------------- 32-element blocks (pack/legacy.py)

// qs[j] = u[j] | u[j+16] << 4, u = q + bias (low 4 bits)
HQQ_FN void put_nibbles32(unsigned char* qs, const signed char* q, int bias) {
  for (int j = 0; j < 16; ++j) qs[j] = (unsigned char)(((q[j] + bias) & 15) | (((q[j + 16] + bias) & 15) << 4));
}

// qh: little-endian uint32, bit i = bit 4 of u[i] = q[i] + bias
HQQ_FN void put_qh32(unsigned char* qh, const signed char* q, int bias) {
  unsigned int bits = 0;
  for (int i = 0; i < 32; ++i) bits |= (unsigned int)(((q[i] + bias) >> 4) & 1) << i;
  for (int k = 0; k < 4; ++k) qh[k] = (unsigned char)(bits >> (8 * k));
}

HQQ_FN void write_q4_0(unsigned char* o, float d, float, const signed char* q) {  // d | qs[16]
  put_fp16(o, d);
  put_nibbles32(o + 2, q, 8);
}

HQQ_FN void write_q4_1(unsigned char* o, float d, float m, const signed char* q) {  // d | m | qs[16]
  put_fp16(o, d);
  put_fp16(o + 2, m);
  put_nibbles32(o + 4, q, 0);
}

HQQ_FN void write_q5_0(unsigned char* o, float d, float, const signed char* q) {  // d | qh | qs[16]
  put_fp16(o, d);
  put_qh32(o + 2, q, 16);
  put_nibbles32(o + 6, q, 16);
}

HQQ_FN void write_q5_1(unsigned char* o, float d, float m, const signed char* q) {  // d | m | qh | qs[16]
  put_fp16(o, d);
  put_fp16(o + 2, m);
  put_qh32(o + 4, q, 0);
  put_nibbles32(o + 8, q, 0);
}

HQQ_FN void write_q8_0(unsigned char* o, float d, float, const signed char* q) {  // d | qs[32] int8
  put_fp16(o, d);
  for (int j = 0; j < 32; ++j) o[2 + j] = (unsigned char)q[j];
}

HQQ_FN void write_iq4_nl(unsigned char* o, float d, float, const signed char* q) {  // d | qs[16] (indices)
  put_fp16(o, d);
  put_nibbles32(o + 2, q, 0);
}

// ---------------------------------------------------------------- ternary 256-element blocks (pack/ternary.py)
// The CPU build only (block_scale.cu's TQ entry points): 256 values a thread do not fit a GPU's registers.

#if !HQQ_DEVICE_BUILD
// qs[32h + m] bits 2k..2k+1 = q[128h + 32k + m] + 1; then d
HQQ_FN void write_tq2_0(unsigned char* o, float d, float, const signed char* q) {  // qs[64] | d
  for (int h = 0; h < 2; ++h)
    for (int m = 0; m < 32; ++m) {
      unsigned int b = 0;
      for (int k = 0; k < 4; ++k) b |= (unsigned int)(q[128 * h + 32 * k + m] + 1) << (2 * k);
      o[32 * h + m] = (unsigned char)b;
    }
  put_fp16(o + 64, d);
}

// One TQ1_0 group: byte m holds elements first + m + k*nbytes (k = 0..trits-1, k = 0 the most significant
// trit of v), padded to 5 trits by zeros at the bottom; stored as ceil(v * 256 / 243).
HQQ_FN void put_tq1_group(unsigned char* o, const signed char* q, int first, int nbytes, int trits) {
  for (int m = 0; m < nbytes; ++m) {
    int v = 0;
    for (int k = 0; k < trits; ++k) v = 3 * v + (q[first + m + k * nbytes] + 1);
    for (int k = trits; k < 5; ++k) v *= 3;
    o[m] = (unsigned char)((v * 256 + 242) / 243);
  }
}

HQQ_FN void write_tq1_0(unsigned char* o, float d, float, const signed char* q) {  // qs[48] | qh[4] | d
  put_tq1_group(o, q, 0, 32, 5);
  put_tq1_group(o + 32, q, 160, 16, 5);
  put_tq1_group(o + 48, q, 240, 4, 4);
  put_fp16(o + 52, d);
}
#endif

// ---------------------------------------------------------------- K-quant super-blocks (pack/k_sub*.py)

// 2-bit plane qs[64]: element 128h + 32s + l in byte 32h + l, bits 2s..2s+1 (u = q + bias, low 2 bits)
HQQ_FN void put_2bit_plane(unsigned char* qs, const signed char* q, int bias) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      int b = 0;
      for (int s = 0; s < 4; ++s) b |= ((q[128 * h + 32 * s + l] + bias) & 3) << (2 * s);
      qs[32 * h + l] = (unsigned char)b;
    }
}

// bit plane [32]: byte e % 32, bit e / 32 = bit `shift` of q[e] + bias (Q3_K hmask, Q5_K qh)
HQQ_FN void put_bit_plane(unsigned char* o, const signed char* q, int bias, int shift) {
  for (int l = 0; l < 32; ++l) {
    int b = 0;
    for (int k = 0; k < 8; ++k) b |= (((q[32 * k + l] + bias) >> shift) & 1) << k;
    o[l] = (unsigned char)b;
  }
}

// Q4_K/Q5_K nibble plane qs[128]: byte 32c + l = low nibbles of q[64c + l] | q[64c + 32 + l] << 4
HQQ_FN void put_k_nibbles(unsigned char* qs, const signed char* q) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      qs[32 * c + l] = (unsigned char)((q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4));
}

// 8 six-bit scales + 8 six-bit mins -> 12 bytes (get_scale_min_k4 read backwards)
HQQ_FN void put_scale_min_k4(unsigned char* o, const int* sc, const int* mn) {
  for (int j = 0; j < 4; ++j) {
    o[j] = (unsigned char)(sc[j] | ((sc[j + 4] >> 4) << 6));
    o[4 + j] = (unsigned char)(mn[j] | ((mn[j + 4] >> 4) << 6));
    o[8 + j] = (unsigned char)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

// scales[16] (sc | mn << 4) | qs[64] | d | dmin            84 bytes
HQQ_FN void write_q2_k(unsigned char* o, float d, float dmin, const int* sc, const int* mn, const signed char* q) {
  for (int i = 0; i < 16; ++i) o[i] = (unsigned char)((sc[i] & 15) | ((mn[i] & 15) << 4));
  put_2bit_plane(o + 16, q, 0);
  put_fp16(o + 80, d);
  put_fp16(o + 82, dmin);
}

// hmask[32] | qs[64] | scales[12] | d                      110 bytes; u = q + 4, s = sc + 32
HQQ_FN void write_q3_k(unsigned char* o, float d, float, const int* sc, const int*, const signed char* q) {
  put_bit_plane(o, q, 4, 2);
  put_2bit_plane(o + 32, q, 4);
  for (int j = 0; j < 8; ++j) o[96 + j] = (unsigned char)(((sc[j] + 32) & 15) | (((sc[j + 8] + 32) & 15) << 4));
  for (int j = 0; j < 4; ++j) {
    int b = 0;
    for (int k = 0; k < 4; ++k) b |= (((sc[4 * k + j] + 32) >> 4) & 3) << (2 * k);
    o[104 + j] = (unsigned char)b;
  }
  put_fp16(o + 108, d);
}

// d | dmin | scales[12] | qs[128]                          144 bytes
HQQ_FN void write_q4_k(unsigned char* o, float d, float dmin, const int* sc, const int* mn, const signed char* q) {
  put_fp16(o, d);
  put_fp16(o + 2, dmin);
  put_scale_min_k4(o + 4, sc, mn);
  put_k_nibbles(o + 16, q);
}

// d | dmin | scales[12] | qh[32] | qs[128]                 176 bytes
HQQ_FN void write_q5_k(unsigned char* o, float d, float dmin, const int* sc, const int* mn, const signed char* q) {
  put_fp16(o, d);
  put_fp16(o + 2, dmin);
  put_scale_min_k4(o + 4, sc, mn);
  put_bit_plane(o + 16, q, 0, 4);
  put_k_nibbles(o + 48, q);
}

// ql[128] | qh[64] | scales[16] int8 | d                   210 bytes; u = q + 32, element 128h + 32g + l:
// ql[64h + l] = u(g0) | u(g2) << 4, ql[64h + 32 + l] = u(g1) | u(g3) << 4 (low nibbles), qh[32h + l] bits 2g
HQQ_FN void write_q6_k(unsigned char* o, float d, float, const int* sc, const int*, const signed char* q) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const signed char* e = q + 128 * h + l;
      o[64 * h + l] = (unsigned char)(((e[0] + 32) & 15) | (((e[64] + 32) & 15) << 4));
      o[64 * h + 32 + l] = (unsigned char)(((e[32] + 32) & 15) | (((e[96] + 32) & 15) << 4));
      int b = 0;
      for (int g = 0; g < 4; ++g) b |= (((e[32 * g] + 32) >> 4) & 3) << (2 * g);
      o[128 + 32 * h + l] = (unsigned char)b;
    }
  for (int i = 0; i < 16; ++i) o[192 + i] = (unsigned char)(signed char)sc[i];
  put_fp16(o + 208, d);
}

// d | scales_h (u16) | scales_l[4] | qs[128]               136 bytes; ls = sc + 32,
// qs[16i + j] = q[32i + j] | q[32i + 16 + j] << 4
HQQ_FN void write_iq4_xs(unsigned char* o, float d, float, const int* sc, const int*, const signed char* q) {
  put_fp16(o, d);
  unsigned int h = 0;
  for (int i = 0; i < 8; ++i) h |= (unsigned int)(((sc[i] + 32) >> 4) & 3) << (2 * i);
  o[2] = (unsigned char)(h & 0xffu);
  o[3] = (unsigned char)(h >> 8);
  for (int k = 0; k < 4; ++k) o[4 + k] = (unsigned char)(((sc[2 * k] + 32) & 15) | (((sc[2 * k + 1] + 32) & 15) << 4));
  for (int i = 0; i < 8; ++i) put_nibbles32(o + 8 + 16 * i, q + 32 * i, 0);
}

}  // namespace hqq
