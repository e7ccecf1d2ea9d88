// Philox4x32-10 and Box–Muller normals on the device: the same pure function of (seed, purpose,
// step, sample, member, element) as src/rng.rs (docs/random.md), so that the uniform words are
// bit-identical to the CPU's and the normals (computed in float64, rounded to float32) equal them
// up to the device's float64 log/sin/cos (within an ulp of float32; bit-identical on the emulator).
//
// Cost: one Philox call is 10 rounds of two 32×32→64 multiplies and a few xors (integer units);
// a normal adds one float64 log, sqrt and sin or cos. A kernel that needs element e computes only
// the pair and the half of it that e takes.
#pragma once

#define DYDIFF_PHILOX_M0 0xD2511F53u
#define DYDIFF_PHILOX_M1 0xCD9E8D57u
#define DYDIFF_PHILOX_W0 0x9E3779B9u
#define DYDIFF_PHILOX_W1 0xBB67AE85u

// Where a row of noise lives: the key (seed) and the counter words that do not vary along it.
struct NoiseStream {
  unsigned k0, k1;  // seed, lower and upper 32 bits
  unsigned step;    // c1
  unsigned sample;  // c2
  unsigned c3;      // purpose · 2^24 + member
};

__device__ __forceinline__ NoiseStream noise_stream(unsigned long long seed, unsigned purpose,
                                                    unsigned step, unsigned sample,
                                                    unsigned member) {
  NoiseStream s;
  s.k0 = unsigned(seed);
  s.k1 = unsigned(seed >> 32);
  s.step = step;
  s.sample = sample;
  s.c3 = (purpose << 24) | (member & 0xffffffu);
  return s;
}

// The four output words of counter (c0, c1, c2, c3) under key (k0, k1), in place.
__device__ __forceinline__ void philox4x32_10(unsigned c[4], unsigned k0, unsigned k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += DYDIFF_PHILOX_W0;
      k1 += DYDIFF_PHILOX_W1;
    }
    unsigned hi0 = __umulhi(DYDIFF_PHILOX_M0, c[0]), lo0 = DYDIFF_PHILOX_M0 * c[0];
    unsigned hi1 = __umulhi(DYDIFF_PHILOX_M1, c[2]), lo1 = DYDIFF_PHILOX_M1 * c[2];
    unsigned n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
  }
}

// The words of call c0 = block of a stream.
__device__ __forceinline__ void noise_words(const NoiseStream& s, unsigned block, unsigned w[4]) {
  w[0] = block;
  w[1] = s.step;
  w[2] = s.sample;
  w[3] = s.c3;
  philox4x32_10(w, s.k0, s.k1);
}

// The standard normal of element e of a stream: normal number e mod 4 of call ⌊e/4⌋.
__device__ __forceinline__ float noise_normal(const NoiseStream& s, unsigned long long e) {
  unsigned w[4];
  noise_words(s, unsigned(e >> 2), w);
  unsigned j = unsigned(e & 3);
  const double inv = 1.0 / 4294967296.0;
  double u = (double(w[j & 2u]) + 0.5) * inv;
  double v = (double(w[(j & 2u) + 1]) + 0.5) * inv;
  double r = sqrt(-2.0 * log(u));
  double a = 6.283185307179586 * v;
  return float(j & 1u ? r * sin(a) : r * cos(a));
}
