// Sigmoid focal loss on CUDA: element-wise, computed in float for half/bfloat16.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../focal_loss.h"
#include "../kernels.h"

namespace atss {

namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void focal_loss_forward_kernel(const scalar_t* __restrict__ logits,
                                          const int64_t* __restrict__ targets, int64_t total,
                                          int64_t num_classes, double gamma, double alpha,
                                          scalar_t* __restrict__ loss) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t row = e / num_classes, column = e % num_classes;
    const int64_t target = targets[row];
    const acc_t value = target < 0 ? acc_t(0)
                                   : focal_loss_value<acc_t, StdMath, PowAny>(
                                         static_cast<acc_t>(logits[e]), target == column + 1,
                                         acc_t(gamma), acc_t(alpha));
    loss[e] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t>
__global__ void focal_loss_backward_kernel(const scalar_t* __restrict__ logits,
                                           const int64_t* __restrict__ targets,
                                           const scalar_t* __restrict__ grad_loss, int64_t total,
                                           int64_t num_classes, double gamma, double alpha,
                                           scalar_t* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t row = e / num_classes, column = e % num_classes;
    const int64_t target = targets[row];
    const acc_t d = target < 0 ? acc_t(0)
                               : focal_loss_grad<acc_t, StdMath, PowAny>(
                                     static_cast<acc_t>(logits[e]), target == column + 1,
                                     acc_t(gamma), acc_t(alpha));
    grad[e] = static_cast<scalar_t>(static_cast<acc_t>(grad_loss[e]) * d);
  }
}

int blocks_for(int64_t total) {
  const int64_t max_blocks =
      int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min(max_blocks, (total + kThreads - 1) / kThreads)));
}

}  // namespace

at::Tensor sigmoid_focal_loss_forward_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                           double gamma, double alpha) {
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor loss = at::empty_like(logits);
  const int64_t total = logits.numel();
  if (total == 0) return loss;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "atss_focal_loss_forward_cuda", [&] {
    focal_loss_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), total, logits.size(1),
        gamma, alpha, loss.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return loss;
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                            const at::Tensor& grad_loss, double gamma,
                                            double alpha) {
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor grad = at::empty_like(logits);
  const int64_t total = logits.numel();
  if (total == 0) return grad;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "atss_focal_loss_backward_cuda", [&] {
    focal_loss_backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), grad_loss.data_ptr<scalar_t>(),
        total, logits.size(1), gamma, alpha,
        grad.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace atss
