// The loader's random engine (pure C++17): one splitmix64 stream per batch item, so a batch depends only on
// (seed, step) and never on the thread count. Used by the slice sampler and the augmentation draws.
#pragma once

#include <cstdint>

namespace fewshot_da {

// splitmix64 finaliser (Steele, Lea & Flood 2014): a bijection on 64-bit words.
inline uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Per-item engine: state0 = mix(mix(mix(seed + G) + step + G) + item + G) with G = 0x9e3779b97f4a7c15,
// then the splitmix64 stream (state += G; output mix(state)). Bounded draws use rejection of the low
// 2^64 mod n outputs followed by modulo (PCG's bounded_rand), so they are exactly uniform.
// fewshot_da/data/loader_reference.py reproduces this in Python integers.
class ItemRng {
public:
    static constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
    ItemRng(uint64_t seed, uint64_t step, uint64_t item)
        : state_(splitmix64_mix(splitmix64_mix(splitmix64_mix(seed + kGolden) + step + kGolden) + item +
                                kGolden)) {}
    uint64_t next() {
        state_ += kGolden;
        return splitmix64_mix(state_);
    }
    // Uniform integer in [0, n), n >= 1.
    uint64_t below(uint64_t n) {
        const uint64_t threshold = (0 - n) % n;
        for (;;) {
            const uint64_t r = next();
            if (r >= threshold) return r % n;
        }
    }

private:
    uint64_t state_;
};

}  // namespace fewshot_da
