// Python bindings of the emulated CUDA kernels next to the CPU kernels they must
// agree with (tests/test_cuda_kernels_emulated.py). Both sets are compiled from
// atss_core/csrc unchanged (the .cu files only rewritten for a C++ compiler by
// build.py); the tensors are CPU tensors.
#include <torch/extension.h>

#include "kernels.h"

namespace {

atss::DeformGeometry geometry(const std::vector<int64_t>& v) {
  TORCH_CHECK(v.size() == 14, "geometry: expected 14 integers (channels, height, width, out_h, "
              "out_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, "
              "dilation_w, deformable_groups), got ", v.size());
  return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]};
}

// Kernels that check the emulator itself (test_emulator_* in the test file).

// Tree reduction over shared memory: right only if every __syncthreads holds all
// threads of the block until each has arrived.
__global__ void block_sum_kernel(const int* in, int* out) {
  __shared__ int partial[1024];
  partial[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// Threads of one block waiting at two different barriers: undefined on a GPU.
__global__ void divergent_barrier_kernel() {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void noop_kernel() {}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("block_sums", [](const at::Tensor& values, int64_t threads) {
    TORCH_CHECK(values.scalar_type() == at::kInt && values.numel() % threads == 0);
    at::Tensor out = at::empty({values.numel() / threads}, values.options());
    atss_emu::Launch(out.numel(), threads).kernel(block_sum_kernel)(values.data_ptr<int>(),
                                                                    out.data_ptr<int>());
    return out;
  }, "per-block sums of int32 `values` in blocks of `threads` (a power of two)");
  m.def("launch_divergent_barrier", [] {
    atss_emu::Launch(1, 64).kernel(divergent_barrier_kernel)();
  });
  m.def("launch_noop", [](std::vector<int64_t> grid, std::vector<int64_t> block, int64_t shared) {
    atss_emu::Launch(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), shared)
        .kernel(noop_kernel)();
  }, "an empty kernel with the given launch configuration (checks the launch limits)");
  m.def("set_multiprocessor_count", [](int count) { atss_emu::multiprocessor_count = count; },
        "multiProcessorCount the emulated device reports");
  m.def("take_launch_log", [] {
    std::vector<py::dict> out;
    for (const auto& r : atss_emu::launch_log) {
      py::dict d;
      d["grid"] = py::make_tuple(r.grid[0], r.grid[1], r.grid[2]);
      d["block"] = py::make_tuple(r.block[0], r.block[1], r.block[2]);
      d["shared_bytes"] = r.shared_bytes;
      d["barriers"] = r.barriers;
      out.push_back(d);
    }
    atss_emu::launch_log.clear();
    return out;
  }, "the launches since the last call: grid, block, dynamic shared bytes, barrier rounds");

  for (const bool cuda : {true, false}) {
    const std::string p = cuda ? "cuda_" : "cpu_";
    m.def((p + "nms").c_str(),
          [cuda](const at::Tensor& boxes, const at::Tensor& scores,
                 const c10::optional<at::Tensor>& labels, double threshold) {
            return cuda ? atss::nms_cuda(boxes, scores, labels, threshold)
                        : atss::nms_cpu(boxes, scores, labels, threshold);
          });
    m.def((p + "focal_loss_forward").c_str(),
          [cuda](const at::Tensor& logits, const at::Tensor& targets, double gamma, double alpha) {
            return cuda ? atss::sigmoid_focal_loss_forward_cuda(logits, targets, gamma, alpha)
                        : atss::sigmoid_focal_loss_forward_cpu(logits, targets, gamma, alpha);
          });
    m.def((p + "focal_loss_backward").c_str(),
          [cuda](const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& grad,
                 double gamma, double alpha) {
            return cuda ? atss::sigmoid_focal_loss_backward_cuda(logits, targets, grad, gamma, alpha)
                        : atss::sigmoid_focal_loss_backward_cpu(logits, targets, grad, gamma, alpha);
          });
    m.def((p + "deform_im2col").c_str(),
          [cuda](const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                 const std::vector<int64_t>& geo, int64_t batch, at::Tensor columns) {
            const atss::DeformGeometry g = geometry(geo);
            cuda ? atss::deform_im2col_cuda(input, offset, mask, g, batch, columns)
                 : atss::deform_im2col_cpu(input, offset, mask, g, batch, columns);
          });
    m.def((p + "deform_col2im").c_str(),
          [cuda](const at::Tensor& grad_columns, const at::Tensor& offset, const at::Tensor& mask,
                 const std::vector<int64_t>& geo, int64_t batch, at::Tensor grad_input) {
            const atss::DeformGeometry g = geometry(geo);
            cuda ? atss::deform_col2im_cuda(grad_columns, offset, mask, g, batch, grad_input)
                 : atss::deform_col2im_cpu(grad_columns, offset, mask, g, batch, grad_input);
          });
    m.def((p + "deform_col2im_coord").c_str(),
          [cuda](const at::Tensor& grad_columns, const at::Tensor& input, const at::Tensor& offset,
                 const at::Tensor& mask, const std::vector<int64_t>& geo, int64_t batch,
                 at::Tensor grad_offset, at::Tensor grad_mask) {
            const atss::DeformGeometry g = geometry(geo);
            cuda ? atss::deform_col2im_coord_cuda(grad_columns, input, offset, mask, g, batch,
                                                  grad_offset, grad_mask)
                 : atss::deform_col2im_coord_cpu(grad_columns, input, offset, mask, g, batch,
                                                 grad_offset, grad_mask);
          });
  }
}
