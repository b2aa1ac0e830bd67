// Per-item augmentation parameter draws; see augment.h for the transform and the word order.
#include "augment.h"

#include <algorithm>
#include <cmath>

#include "rng.h"

namespace fewshot_da {
namespace {

constexpr double kPi = 3.14159265358979323846;

double uniform01(ItemRng& rng) { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; }

double uniform(ItemRng& rng, double lo, double hi) { return lo + (hi - lo) * uniform01(rng); }

// 2 x 2 row-major product a * b (written out so Python reproduces it operation for operation).
void matmul2(const double* a, const double* b, double* out) {
    const double r0 = a[0] * b[0] + a[1] * b[2], r1 = a[0] * b[1] + a[1] * b[3];
    const double r2 = a[2] * b[0] + a[3] * b[2], r3 = a[2] * b[1] + a[3] * b[3];
    out[0] = r0, out[1] = r1, out[2] = r2, out[3] = r3;
}

}  // namespace

bool AugmentParams::spatial() const {
    return matrix[0] != 1 || matrix[1] != 0 || matrix[2] != 0 || matrix[3] != 1 || translate_y != 0 ||
           translate_x != 0;
}

bool AugmentParams::has_bias() const { return bias[0] != 0 || bias[1] != 0 || bias[2] != 0 || bias[3] != 0; }

AugmentParams draw_augment(ItemRng& rng, const AugmentSpec& s) {
    AugmentParams a;
    bool on = uniform01(rng) < s.rotation_p;
    double u = uniform(rng, -s.rotation_deg, s.rotation_deg);
    if (on) a.angle_deg = u;
    on = uniform01(rng) < s.rot90_p;
    const int k = 1 + static_cast<int>(uniform01(rng) * 3.0);
    if (on) a.rot90 = k;
    on = uniform01(rng) < s.zoom_p;
    u = uniform(rng, s.zoom_min, s.zoom_max);
    if (on) a.zoom = u;
    on = uniform01(rng) < s.shear_p;
    const double sy = uniform(rng, -s.shear, s.shear), sx = uniform(rng, -s.shear, s.shear);
    if (on) a.shear_y = sy, a.shear_x = sx;
    a.flip_y = uniform01(rng) < s.flip_y_p;
    a.flip_x = uniform01(rng) < s.flip_x_p;
    on = uniform01(rng) < s.translate_p;
    const double ty = uniform(rng, -s.translate_y_px, s.translate_y_px);
    const double tx = uniform(rng, -s.translate_x_px, s.translate_x_px);
    if (on) a.translate_y = ty, a.translate_x = tx;
    on = uniform01(rng) < s.bias_p;
    for (double& b : a.bias) {
        u = uniform(rng, -s.bias, s.bias);
        if (on) b = u;
    }
    on = uniform01(rng) < s.gamma_p;
    const bool below = uniform01(rng) < 0.5;
    u = uniform01(rng);
    if (on) {
        if (s.gamma_min < 1 && s.gamma_max > 1)
            a.gamma = below ? s.gamma_min + (1 - s.gamma_min) * u : 1 + (s.gamma_max - 1) * u;
        else
            a.gamma = s.gamma_min + (s.gamma_max - s.gamma_min) * u;
    }
    on = uniform01(rng) < s.contrast_p;
    u = uniform(rng, s.contrast_min, s.contrast_max);
    if (on) a.contrast = u;
    on = uniform01(rng) < s.brightness_p;
    u = uniform(rng, -s.brightness, s.brightness);
    if (on) a.brightness = u;
    on = uniform01(rng) < s.noise_p;
    u = uniform(rng, s.noise_sd_min, s.noise_sd_max);
    const uint64_t key = rng.next();
    if (on) a.noise_sd = u, a.noise_key = key;

    // M = (1 / zoom) R(angle) R90^k [[1, shear_y], [shear_x, 1]] diag(flip_y, flip_x)
    const double theta = a.angle_deg * kPi / 180.0;
    const double c = std::cos(theta), sn = std::sin(theta);
    const double rot[4] = {c, -sn, sn, c};
    static const double quarter[4][4] = {{1, 0, 0, 1}, {0, -1, 1, 0}, {-1, 0, 0, -1}, {0, 1, -1, 0}};
    const double shear[4] = {1, a.shear_y, a.shear_x, 1};
    const double flip[4] = {a.flip_y ? -1.0 : 1.0, 0, 0, a.flip_x ? -1.0 : 1.0};
    double m[4];
    matmul2(rot, quarter[a.rot90], m);
    matmul2(m, shear, m);
    matmul2(m, flip, m);
    const double inv_zoom = 1.0 / a.zoom;
    for (int i = 0; i < 4; ++i) a.matrix[i] = m[i] * inv_zoom;
    return a;
}

}  // namespace fewshot_da
