// Fused random-slice batch assembler over registered slice-major volumes (pure C++17, no Python).
//
// Each volume is (S, H, W) C-contiguous: float32 or float16 image, uint8 mask, both owned by the caller
// (they must outlive the SliceBatcher). Item i of step t is drawn by its own engine (see ItemRng), so a
// batch depends only on (seed, t) and never on the thread count:
//   1. scan  = uniform over the volumes (over the volumes with a foreground slice for the last
//              n_fg_items items of a batch);
//   2. slice = uniform over that scan's allowed slice list (over its allowed foreground slices);
//   3. crop (ch, cw): when H >= ch and W >= cw the top-left corner is uniform over the fitting
//      positions, y0 ~ U{0..H-ch}, x0 ~ U{0..W-cw} (drawn in this order); otherwise no draw and the crop
//      is centred in BOTH dims as dpipe's get_centered_box(shape // 2, crop) does:
//      y0 = H/2 - ch/2, x0 = W/2 - cw/2 (integer division), and output pixel (r, c) reads (y0 + r, x0 + c)
//      or, outside the slice, the slice's minimum (image) / 0 (mask).
// Cost: O(B * ch * cw) per batch, plus one O(H * W) pass per slice the first time it needs padding.
// With an AugmentSpec, each item then draws its augmentation (augment.h) from the same engine and is
// produced in one pass per output row: warp (bilinear, or the plain crop when the affine is the identity)
// into the float32 output row, then the intensity chain in place (float32, see augment.h); no intermediate
// image. Before a warp, one pass in address order touches the source rectangle the crop maps into, so the
// warp's rotated walk finds the slice in L2 instead of missing to memory. The warp (8 columns at a time,
// border blocks included) and the intensity chain have AVX2 + FMA paths and the noise an AVX-512DQ path;
// the scalar fallbacks do the same float32 operations (without FMA, so they can differ by an ulp). Slice
// max / mean (gamma, contrast) are computed once per slice.
// Masks must hold only 0 and 1 (checked over the allowed slices at construction).
// Without augmentation, output rows are written with non-temporal AVX2 stores when the CPU has AVX2 + F16C (the batch is read
// by someone else later, so skipping the read-for-ownership saves a third of the memory traffic);
// otherwise portable loops. Both give bit-identical results.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "augment.h"
#include "rng.h"

namespace fewshot_da {

enum class ImageDtype : int { kFloat32 = 0, kFloat16 = 1 };

// One registered volume: raw pointers plus sizes; `allowed` lists the slice indices that may be drawn.
struct SliceVolume {
    const void* image = nullptr;  // (n_slices, height, width) float32 or float16
    ImageDtype dtype = ImageDtype::kFloat32;
    const uint8_t* mask = nullptr;  // (n_slices, height, width), 0 = background, 1 = foreground
    int64_t n_slices = 0, height = 0, width = 0;
    std::vector<int64_t> allowed;
};

// Where one batch item comes from (exposed for tests and debugging).
struct ItemDraw {
    int64_t volume, slice, y0, x0;
    bool centred;
};

class SliceBatcher {
public:
    // Throws std::invalid_argument for empty volume lists, non-positive sizes, empty or out-of-range
    // slice lists, n_fg_items outside [0, batch_size], n_fg_items > 0 with no foreground slice at all, or
    // a mask value other than 0 and 1 ("volume k: mask value v at slice s ..."). Checking the masks and
    // finding the foreground slices read the allowed mask slices once. `augment` null: no augmentation.
    SliceBatcher(std::vector<SliceVolume> volumes, int64_t batch_size, int64_t crop_h, int64_t crop_w,
                 uint64_t seed, int64_t n_fg_items, int num_threads, const AugmentSpec* augment = nullptr);

    // Fills image_out and mask_out, each (batch_size, 1, crop_h, crop_w) float32, with step `step`.
    void fill(uint64_t step, float* image_out, float* mask_out, int num_threads) const;

    ItemDraw draw(uint64_t step, int64_t item) const;
    // Augmentation parameters of one item (identity values without augmentation).
    AugmentParams augment_params(uint64_t step, int64_t item) const;
    bool augmenting() const { return augment_; }

    int64_t batch_size() const { return batch_size_; }
    int64_t crop_h() const { return crop_h_; }
    int64_t crop_w() const { return crop_w_; }
    // Allowed slices of `volume` that contain foreground (empty unless n_fg_items > 0).
    const std::vector<int64_t>& foreground_slices(int64_t volume) const { return fg_slices_[volume]; }

private:
    void fill_item(uint64_t step, int64_t item, float* image_out, float* mask_out) const;
    void fill_item_augmented(const ItemDraw& d, const AugmentParams& a, float* x, float* y) const;
    ItemDraw draw_from(ItemRng& rng, int64_t item) const;
    float slice_minimum(int64_t volume, int64_t slice) const;
    // Maximum and mean (double accumulation) of one slice, computed once and cached.
    struct SliceMoments {
        float maximum;
        double mean;
    };
    const SliceMoments& slice_moments(int64_t volume, int64_t slice) const;

    std::vector<SliceVolume> volumes_;
    int64_t batch_size_, crop_h_, crop_w_;
    uint64_t seed_;
    int64_t n_fg_items_;
    std::vector<std::vector<int64_t>> fg_slices_;  // per volume
    std::vector<int64_t> fg_volumes_;             // volumes with at least one allowed foreground slice
    // Lazily computed slice minima: 0 = not yet, else (1 << 32) | float bits. Racing writers store the
    // same value, so the result is deterministic.
    std::vector<int64_t> min_offset_;  // per volume, index of its slice 0 in min_cache_
    std::unique_ptr<std::atomic<uint64_t>[]> min_cache_;
    bool augment_ = false;
    AugmentSpec spec_;
    std::unique_ptr<std::once_flag[]> moments_once_;  // allocated only when augmenting
    std::unique_ptr<SliceMoments[]> moments_;
};

// Exact IEEE half -> float conversion of n values (F16C when the CPU has it, bit manipulation otherwise).
void half_to_float(const uint16_t* src, float* dst, int64_t n);

}  // namespace fewshot_da
