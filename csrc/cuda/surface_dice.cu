// CUDA surface Dice: corner codes of the whole array (kernel 1), then per-surfel stencil queries with
// per-block shared histograms (kernel 2). See surface_dice_cuda.h.
#include <cuda_runtime.h>

#include <array>
#include <vector>

#include "cuda/surface_dice_cuda.h"
#include "surfel.h"

namespace fewshot_da {
namespace {

__global__ void codes_kernel(const uint8_t* mask, int64_t n0, int64_t n1, int64_t n2, int ndim, int64_t m0,
                             int64_t m1, int64_t m2, uint8_t* codes) {
    const int64_t total = m0 * m1 * m2;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t c2 = i % m2, c1 = (i / m2) % m1, c0 = i / (m1 * m2);
        codes[i] = corner_code(mask, n0, n1, n2, ndim, c0, c1, c2);
    }
}

// hist: [gt total, gt within, pred total, pred within] x 256 (unsigned long long).
__global__ void stencil_kernel(const uint8_t* gt, const uint8_t* pred, int64_t m0, int64_t m1, int64_t m2, int ndim,
                               const CornerOffset* offsets, int n_offsets, unsigned long long* hist) {
    __shared__ unsigned int local[1024];
    for (int k = threadIdx.x; k < 1024; k += blockDim.x) local[k] = 0;
    __syncthreads();
    const int64_t total = m0 * m1 * m2;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const uint8_t gc = gt[i], pc = pred[i];
        const bool gs = is_surfel(gc, ndim), ps = is_surfel(pc, ndim);
        if (!gs && !ps) continue;
        const int64_t c2 = i % m2, c1 = (i / m2) % m1, c0 = i / (m1 * m2);
        for (int side = 0; side < 2; ++side) {
            const bool mine = side == 0 ? gs : ps;
            if (!mine) continue;
            const uint8_t code = side == 0 ? gc : pc;
            const uint8_t* other = side == 0 ? pred : gt;
            atomicAdd(&local[512 * side + code], 1u);
            if (stencil_hit(other, m0, m1, m2, ndim, c0, c1, c2, offsets, n_offsets))
                atomicAdd(&local[512 * side + 256 + code], 1u);
        }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < 1024; k += blockDim.x)
        if (local[k]) atomicAdd(&hist[k], static_cast<unsigned long long>(local[k]));
}

struct DeviceBuffers {
    uint8_t* codes = nullptr;
    CornerOffset* offsets = nullptr;
    unsigned long long* hist = nullptr;
    ~DeviceBuffers() {
        cudaFree(codes);
        cudaFree(offsets);
        cudaFree(hist);
    }
};

}  // namespace

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

std::string surface_dice_areas_cuda(const MaskPair& m, const double* tolerances_mm, int n_tolerances, double* out) {
    const int64_t m0 = m.ndim == 3 ? m.shape[0] + 1 : 1, m1 = m.shape[1] + 1, m2 = m.shape[2] + 1;
    const int64_t corners = m0 * m1 * m2;
    std::vector<std::vector<std::array<int64_t, 3>>> stencils;
    size_t max_offsets = 0;
    for (int t = 0; t < n_tolerances; ++t) {
        stencils.push_back(corner_stencil(m.ndim, m.spacing_mm, tolerances_mm[t], kMaxStencilOffsets));
        if (stencils.back().empty()) return "tolerance_mm too large for the CUDA stencil (use the CPU path)";
        max_offsets = std::max(max_offsets, stencils.back().size());
    }
    for (const uint8_t* p : {m.gt, m.pred}) {
        cudaPointerAttributes attr;
        if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
            cudaGetLastError();
            return "could not query the mask pointers (is a CUDA device present?)";
        }
        if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
            return "mask pointers must point to device (or managed) memory";
    }
    DeviceBuffers buf;
    cudaError_t err = cudaMalloc(&buf.codes, 2 * corners);
    if (err == cudaSuccess) err = cudaMalloc(&buf.offsets, sizeof(CornerOffset) * std::max<size_t>(1, max_offsets));
    if (err == cudaSuccess) err = cudaMalloc(&buf.hist, sizeof(unsigned long long) * 1024);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    uint8_t* gt_codes = buf.codes;
    uint8_t* pred_codes = buf.codes + corners;
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<int64_t>((corners + threads - 1) / threads, 65536));
    codes_kernel<<<blocks, threads>>>(m.gt, m.shape[0], m.shape[1], m.shape[2], m.ndim, m0, m1, m2, gt_codes);
    codes_kernel<<<blocks, threads>>>(m.pred, m.shape[0], m.shape[1], m.shape[2], m.ndim, m0, m1, m2, pred_codes);
    double areas[256] = {0};
    if (m.ndim == 3) surfel_areas_3d(m.spacing_mm, areas);
    else surfel_areas_2d(m.spacing_mm + 1, areas);
    for (int t = 0; t < n_tolerances; ++t) {
        std::vector<CornerOffset> offs;
        for (const auto& o : stencils[t])
            offs.push_back({static_cast<int>(o[0]), static_cast<int>(o[1]), static_cast<int>(o[2])});
        err = cudaMemcpy(buf.offsets, offs.data(), sizeof(CornerOffset) * offs.size(), cudaMemcpyHostToDevice);
        if (err == cudaSuccess) err = cudaMemset(buf.hist, 0, sizeof(unsigned long long) * 1024);
        if (err != cudaSuccess) return cudaGetErrorString(err);
        stencil_kernel<<<blocks, threads>>>(gt_codes, pred_codes, m0, m1, m2, m.ndim, buf.offsets,
                                            static_cast<int>(offs.size()), buf.hist);
        unsigned long long hist[1024];
        err = cudaMemcpy(hist, buf.hist, sizeof(hist), cudaMemcpyDeviceToHost);
        if (err == cudaSuccess) err = cudaGetLastError();
        if (err != cudaSuccess) return cudaGetErrorString(err);
        areas_from_counts(hist, areas, out + 4 * t);
    }
    return "";
}

}  // namespace fewshot_da
