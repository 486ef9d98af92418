// Greedy NMS on CUDA (plain and class-wise), reference "+1" box convention.
//
// 1. Boxes are stably sorted by descending score.
// 2. nms_mask_kernel: for each box i and each block of 64 later boxes, a 64-bit
//    word whose bit t says "box i suppresses box 64 * block + t", i.e. their IoU
//    is > the threshold (only blocks at or right of i's own block are computed).
// 3. nms_gather_kernel: one thread block walks the boxes in order and keeps a box
//    when no kept box before it suppresses it, OR-ing the kept box's mask row into
//    the "removed" bitset (each thread owns a strided subset of its words).
// 4. The kept boxes are returned in ascending index order (as the reference's kernel).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../box_iou.h"
#include "../kernels.h"

namespace atss {

namespace {

constexpr int kBlockBoxes = 64;
constexpr int64_t kMaxSharedWords = 48 * 1024 / sizeof(unsigned long long);

template <typename scalar_t>
__global__ void nms_mask_kernel(const scalar_t* __restrict__ boxes,
                                const int64_t* __restrict__ labels, int64_t n, int64_t col_blocks,
                                scalar_t threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int64_t row_start = row_block * kBlockBoxes, col_start = col_block * kBlockBoxes;
  const int rows = n - row_start < kBlockBoxes ? static_cast<int>(n - row_start) : kBlockBoxes;
  const int cols = n - col_start < kBlockBoxes ? static_cast<int>(n - col_start) : kBlockBoxes;

  __shared__ scalar_t col_boxes[kBlockBoxes * 4];
  __shared__ int64_t col_labels[kBlockBoxes];
  if (threadIdx.x < cols) {
#pragma unroll
    for (int d = 0; d < 4; ++d) {
      col_boxes[threadIdx.x * 4 + d] = boxes[(col_start + threadIdx.x) * 4 + d];
    }
    if (labels != nullptr) col_labels[threadIdx.x] = labels[col_start + threadIdx.x];
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;

  const int64_t row = row_start + threadIdx.x;
  scalar_t row_box[4];
#pragma unroll
  for (int d = 0; d < 4; ++d) row_box[d] = boxes[row * 4 + d];
  const int64_t row_label = labels != nullptr ? labels[row] : 0;
  unsigned long long bits = 0;
  const int first = col_block == row_block ? threadIdx.x + 1 : 0;
  for (int t = first; t < cols; ++t) {
    if (labels != nullptr && col_labels[t] != row_label) continue;
    if (box_iou_plus1(row_box, col_boxes + t * 4) > threshold) bits |= 1ULL << t;
  }
  mask[row * col_blocks + col_block] = bits;
}

// Single block. `removed_global` is used when the bitset does not fit in shared memory.
__global__ void nms_gather_kernel(const unsigned long long* __restrict__ mask, int64_t n,
                                  int64_t col_blocks, bool use_shared,
                                  unsigned long long* __restrict__ removed_global,
                                  bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed_shared[];
  unsigned long long* removed = use_shared ? removed_shared : removed_global;
  for (int64_t w = threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] = 0;
  __syncthreads();
  for (int64_t block = 0; block < col_blocks; ++block) {
    unsigned long long current = removed[block];  // same value in every thread
    const int64_t start = block * kBlockBoxes;
    const int count = n - start < kBlockBoxes ? static_cast<int>(n - start) : kBlockBoxes;
    for (int t = 0; t < count; ++t) {
      const int64_t i = start + t;
      const bool kept = !((current >> t) & 1ULL);
      if (threadIdx.x == 0) keep[i] = kept;
      if (!kept) continue;  // uniform across the block
      const unsigned long long* row = mask + i * col_blocks;
      current |= row[block];
      for (int64_t w = block + 1 + threadIdx.x; w < col_blocks; w += blockDim.x) {
        removed[w] |= row[w];
      }
    }
    __syncthreads();
  }
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                    const c10::optional<at::Tensor>& labels, double iou_threshold) {
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  at::Tensor sorted_labels;
  if (labels.has_value()) sorted_labels = labels->index_select(0, order).contiguous();

  const int64_t col_blocks = (n + kBlockBoxes - 1) / kBlockBoxes;
  TORCH_CHECK(col_blocks <= 65535, "nms on CUDA supports at most ", 65535 * kBlockBoxes,
              " boxes, got ", n);
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kBool));
  const bool use_shared = col_blocks <= kMaxSharedWords;
  at::Tensor removed = use_shared ? at::Tensor() : at::empty({col_blocks}, mask.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "atss_nms_cuda", [&] {
    const dim3 grid(col_blocks, col_blocks);
    nms_mask_kernel<scalar_t><<<grid, kBlockBoxes, 0, stream>>>(
        sorted_boxes.data_ptr<scalar_t>(),
        labels.has_value() ? sorted_labels.data_ptr<int64_t>() : nullptr, n, col_blocks,
        static_cast<scalar_t>(iou_threshold),
        reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int threads = static_cast<int>(std::min<int64_t>(1024, ((col_blocks + 31) / 32) * 32));
  const size_t shared_bytes = use_shared ? col_blocks * sizeof(unsigned long long) : 0;
  nms_gather_kernel<<<1, threads, shared_bytes, stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()), n, col_blocks,
      use_shared,
      use_shared ? nullptr : reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()),
      keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Ascending index order, as the reference's kernel returns the kept boxes.
  at::Tensor by_index = at::zeros_like(keep);
  by_index.index_put_({order}, keep);
  return by_index.nonzero().squeeze(1);
}

}  // namespace atss
