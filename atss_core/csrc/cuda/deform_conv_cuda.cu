// Column primitives of modulated deformable convolution on CUDA.
// half / bfloat16 inputs are sampled and accumulated in float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../kernels.h"

namespace atss {

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 30));
}

// One thread per (channel, image, output pixel): writes the K taps of that pixel.
template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ input,
                              const scalar_t* __restrict__ offset,
                              const scalar_t* __restrict__ mask, DeformGeometry geo, int64_t batch,
                              scalar_t* __restrict__ columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = geo.channels, K = geo.taps(), L = geo.out_size();
  const int64_t total = C * batch * L;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t l = e % L, b = (e / L) % batch, c = e / (L * batch);
    const int64_t g = c / geo.group_channels(), y = l / geo.out_w, x = l % geo.out_w;
    const scalar_t* im = input + (b * C + c) * geo.height * geo.width;
    const scalar_t* off = offset + (b * geo.deformable_groups + g) * 2 * K * L + l;
    const scalar_t* m = mask + (b * geo.deformable_groups + g) * K * L + l;
    scalar_t* out = columns + c * K * (batch * L) + b * L + l;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = k / geo.kernel_w, j = k % geo.kernel_w;
      const acc_t h = acc_t(dcn_base_h(geo, y, i)) + acc_t(off[2 * k * L]);
      const acc_t w = acc_t(dcn_base_w(geo, x, j)) + acc_t(off[(2 * k + 1) * L]);
      const acc_t v = dcn_sample_value(im, dcn_sample_point<acc_t>(geo.height, geo.width, h, w));
      out[k * batch * L] = static_cast<scalar_t>(v * acc_t(m[k * L]));
    }
  }
}

// One thread per column element (channel, tap, image, pixel): scatters its
// gradient to the (at most four) input pixels it was interpolated from.
template <typename scalar_t, typename acc_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ grad_columns,
                              const scalar_t* __restrict__ offset,
                              const scalar_t* __restrict__ mask, DeformGeometry geo, int64_t batch,
                              acc_t* __restrict__ grad_input) {
  const int64_t C = geo.channels, K = geo.taps(), L = geo.out_size();
  const int64_t total = C * K * batch * L;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t l = e % L, b = (e / L) % batch, k = (e / (L * batch)) % K;
    const int64_t c = e / (L * batch * K);
    const int64_t g = c / geo.group_channels(), y = l / geo.out_w, x = l % geo.out_w;
    const int64_t i = k / geo.kernel_w, j = k % geo.kernel_w;
    const scalar_t* off = offset + (b * geo.deformable_groups + g) * 2 * K * L + l;
    const acc_t h = acc_t(dcn_base_h(geo, y, i)) + acc_t(off[2 * k * L]);
    const acc_t w = acc_t(dcn_base_w(geo, x, j)) + acc_t(off[(2 * k + 1) * L]);
    const SamplePoint<acc_t> s = dcn_sample_point<acc_t>(geo.height, geo.width, h, w);
    const acc_t grad = acc_t(grad_columns[e]) *
                       acc_t(mask[(b * geo.deformable_groups + g) * K * L + k * L + l]);
    acc_t* target = grad_input + (b * C + c) * geo.height * geo.width;
    for (int t = 0; t < 4; ++t) {
      if (s.inside[t] != acc_t(0)) gpuAtomicAdd(target + s.index[t], s.weight[t] * grad);
    }
  }
}

// One thread per (image, deformable group, tap, pixel): sums over the group's
// channels the gradients w.r.t. the sampling position and the mask.
template <typename scalar_t>
__global__ void col2im_coord_kernel(const scalar_t* __restrict__ grad_columns,
                                    const scalar_t* __restrict__ input,
                                    const scalar_t* __restrict__ offset,
                                    const scalar_t* __restrict__ mask, DeformGeometry geo,
                                    int64_t batch, scalar_t* __restrict__ grad_offset,
                                    scalar_t* __restrict__ grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = geo.channels, K = geo.taps(), L = geo.out_size();
  const int64_t dg = geo.deformable_groups, cg = geo.group_channels();
  const int64_t plane = geo.height * geo.width;
  const int64_t total = batch * dg * K * L;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t l = e % L, k = (e / L) % K, g = (e / (L * K)) % dg, b = e / (L * K * dg);
    const int64_t y = l / geo.out_w, x = l % geo.out_w;
    const int64_t i = k / geo.kernel_w, j = k % geo.kernel_w;
    const int64_t off_index = (b * dg + g) * 2 * K * L + 2 * k * L + l;
    const acc_t h = acc_t(dcn_base_h(geo, y, i)) + acc_t(offset[off_index]);
    const acc_t w = acc_t(dcn_base_w(geo, x, j)) + acc_t(offset[off_index + L]);
    const SamplePoint<acc_t> s = dcn_sample_point<acc_t>(geo.height, geo.width, h, w);
    acc_t sum_h = 0, sum_w = 0, sum_m = 0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      const acc_t grad = acc_t(grad_columns[(c * K + k) * batch * L + b * L + l]);
      acc_t v, dh, dw;
      dcn_sample_with_grad(input + (b * C + c) * plane, s, &v, &dh, &dw);
      sum_m += grad * v;
      sum_h += grad * dh;
      sum_w += grad * dw;
    }
    const int64_t mask_index = (b * dg + g) * K * L + k * L + l;
    const acc_t m = acc_t(mask[mask_index]);
    grad_offset[off_index] = static_cast<scalar_t>(sum_h * m);
    grad_offset[off_index + L] = static_cast<scalar_t>(sum_w * m);
    grad_mask[mask_index] = static_cast<scalar_t>(sum_m);
  }
}

}  // namespace

void deform_im2col_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                        const DeformGeometry& geo, int64_t batch, at::Tensor& columns) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t total = geo.channels * batch * geo.out_size();
  if (total == 0) return;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "atss_deform_im2col_cuda", [&] {
    im2col_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), mask.data_ptr<scalar_t>(), geo,
        batch, columns.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void deform_col2im_cuda(const at::Tensor& grad_columns, const at::Tensor& offset,
                        const at::Tensor& mask, const DeformGeometry& geo, int64_t batch,
                        at::Tensor& grad_input) {
  const c10::cuda::CUDAGuard guard(offset.device());
  const int64_t total = geo.channels * geo.taps() * batch * geo.out_size();
  if (total == 0) return;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_columns.scalar_type(),
                                  "atss_deform_col2im_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    col2im_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        grad_columns.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), mask.data_ptr<scalar_t>(),
        geo, batch, grad_input.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void deform_col2im_coord_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                              const at::Tensor& offset, const at::Tensor& mask,
                              const DeformGeometry& geo, int64_t batch, at::Tensor& grad_offset,
                              at::Tensor& grad_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t total = batch * geo.deformable_groups * geo.taps() * geo.out_size();
  if (total == 0) return;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "atss_deform_col2im_coord_cuda", [&] {
    col2im_coord_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        grad_columns.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
        mask.data_ptr<scalar_t>(), geo, batch, grad_offset.data_ptr<scalar_t>(),
        grad_mask.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace atss
