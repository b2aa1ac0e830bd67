// Per-item random augmentation for the slice loader: parameter draws and the fused warp + intensity kernel
// (pure C++17, no Python). fewshot_da/data/loader_reference.py reproduces the draws bit for bit and the
// kernel with scipy.ndimage.affine_transform.
//
// Geometry (pixel centres at integer coordinates, as SciPy): output pixel (r, c) of a ch x cw crop reads
// the source slice at
//     (sy, sx) = (y0 + hy + ty, x0 + hx + tx) + M (r - hy, c - hx),   hy = (ch - 1) / 2, hx = (cw - 1) / 2,
// where (y0, x0) is the loader's crop corner (random or centred), t the translation and
//     M = (1 / zoom) * R(angle) * R90^k * [[1, shear_y], [shear_x, 1]] * diag(flip_y, flip_x).
// M = I, t = 0 reads exactly the plain crop. Image: bilinear, the source extended by its slice minimum
// (the loader's padding value); mask: bilinear, extended by 0, then >= 0.5 -> 1 (decided in double
// precision whenever the float32 sum is within 1e-4 of 0.5, so masks match a double computation).
// Intensity, in this order: bias field
// v = m + (v - m) * exp(a0 u + a1 u^2 + a2 w + a3 w^2) (m = slice minimum, u, w in [-1, 1] across the crop
// columns / rows, the field exactly 1 when all a are 0); gamma v = m + R ((v - m) / R)^g
// (R = slice max - min, skipped when R = 0); contrast v = mu + (v - mu) * c (mu = slice mean);
// brightness v += b; noise v += sd * z, z from the item's noise key (see noise_z). Coordinates are
// double; bilinear sums and the intensity chain are float32, with gamma on, relative to the slice minimum
// (v - m: every bilinear term >= 0, so the sums keep their relative accuracy where gamma's slope is
// unbounded); pow is a float32 exp2 / log2 polynomial (slice_loader.cpp, pow8). Within ~3e-7 x R + a few
// float32 ulps of the double-precision formulas (loader_reference.py).
// Cost: O(ch * cw) per item, about 4 image and 4 mask reads per output pixel.
#pragma once

#include <cstdint>

#include "rng.h"

namespace fewshot_da {

// Ranges and probabilities (all doubles, so Python passes them as they are). A probability of 0 switches a
// transform off; its random words are drawn anyway, so the stream layout does not depend on the options.
struct AugmentSpec {
    double rotation_p = 0, rotation_deg = 0;       // angle ~ U[-rotation_deg, rotation_deg] degrees
    double rot90_p = 0;                             // quarter turns k ~ U{1, 2, 3}
    double zoom_p = 0, zoom_min = 1, zoom_max = 1;  // zoom ~ U[zoom_min, zoom_max] (> 1 magnifies)
    double shear_p = 0, shear = 0;                  // shear_y, shear_x ~ U[-shear, shear]
    double flip_y_p = 0, flip_x_p = 0;
    double translate_p = 0, translate_y_px = 0, translate_x_px = 0;  // t ~ U[-max, max] per axis, pixels
    double bias_p = 0, bias = 0;                    // log-field coefficients ~ U[-bias, bias]
    double gamma_p = 0, gamma_min = 1, gamma_max = 1;
    double contrast_p = 0, contrast_min = 1, contrast_max = 1;
    double brightness_p = 0, brightness = 0;        // shift ~ U[-brightness, brightness], image units
    double noise_p = 0, noise_sd_min = 0, noise_sd_max = 0;
};

// One item's drawn parameters; identity values when a transform was not applied.
struct AugmentParams {
    double angle_deg = 0;
    int rot90 = 0;
    double zoom = 1, shear_y = 0, shear_x = 0;
    bool flip_y = false, flip_x = false;
    double translate_y = 0, translate_x = 0;  // pixels
    double matrix[4] = {1, 0, 0, 1};          // M, row-major, (y, x) order
    double bias[4] = {0, 0, 0, 0};            // a0 u, a1 u^2, a2 w, a3 w^2
    double gamma = 1, contrast = 1, brightness = 0, noise_sd = 0;
    uint64_t noise_key = 0;
    bool spatial() const;    // M != I or t != 0
    bool has_bias() const;
};

// Draws one item's parameters from `rng` (which has already drawn the item's volume, slice and crop).
// Words, in order: rotation (apply, angle), rot90 (apply, k), zoom (apply, value), shear (apply, y, x),
// flip y, flip x, translation (apply, y, x), bias (apply, 4 coefficients), gamma (apply, side, value),
// contrast (apply, value), brightness (apply, value), noise (apply, sd, key): 27 words in all.
// Uniform doubles are (word >> 11) * 2^-53. Gamma as nnU-Net: half the time U[gamma_min, 1), else
// U[max(1, gamma_min), gamma_max] (when the range straddles 1).
AugmentParams draw_augment(ItemRng& rng, const AugmentSpec& spec);

// 1 / sqrt(4 (65536^2 - 1) / 12) rounded to float: the inverse standard deviation of the sum below.
constexpr float kNoiseScale = 2.6428997921303014e-05f;

// Approximately standard normal value of noise word `w`: the sum of its four 16-bit fields (Irwin-Hall,
// n = 4), centred and scaled to unit variance; bounded at +-3.46. Pixel p (row-major in the crop) uses
// word splitmix64_mix(noise_key + (p + 1) * 0x9e3779b97f4a7c15).
inline float noise_z(uint64_t w) {
    const int64_t s = static_cast<int64_t>((w & 0xffff) + ((w >> 16) & 0xffff) + ((w >> 32) & 0xffff) + (w >> 48));
    return static_cast<float>(s - 131070) * kNoiseScale;
}

}  // namespace fewshot_da
