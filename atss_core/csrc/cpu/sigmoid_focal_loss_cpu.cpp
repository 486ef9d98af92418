// Sigmoid focal loss on CPU: parallel over rows. Each row is computed as
// "every column negative" by a vectorisable loop, then its target column (if
// any) is overwritten with the positive formula; ignored rows are zero.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../focal_loss.h"
#include "../kernels.h"

namespace atss {

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per task

// Branch-free float exp / log1p on the ranges the focal loss needs, so that the
// row loop vectorises (libm calls would keep it scalar). Double uses libm.
struct FastMath {
  // exp(y) for y <= 0: Cody-Waite reduction y = n ln2 + r, |r| <= ln2 / 2, and the
  // Cephes degree-6 polynomial for exp(r); relative error about 2e-7. Below -87 the
  // result is clamped to exp(-87) (1.6e-38) instead of going subnormal.
  static float exp_nonpositive(float y) {
    y = y < -87.0f ? -87.0f : y;
    const float n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(y / ln2)
    const float r = (y - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
  }
  // log1p(e) for e in [0, 1]: 2 atanh(s) with s = e / (2 + e) <= 1/3, series to s^15;
  // accurate to a few ulp, also for tiny e.
  static float log1p_unit(float e) {
    const float s = e / (2.0f + e);
    const float z = s * s;
    float p = 1.0f / 15.0f;
    p = p * z + 1.0f / 13.0f;
    p = p * z + 1.0f / 11.0f;
    p = p * z + 1.0f / 9.0f;
    p = p * z + 1.0f / 7.0f;
    p = p * z + 1.0f / 5.0f;
    p = p * z + 1.0f / 3.0f;
    p = p * z + 1.0f;
    return 2.0f * s * p;
  }
  static double exp_nonpositive(double y) { return std::exp(y); }
  static double log1p_unit(double e) { return std::log1p(e); }
};

// out[i, :] for rows [begin, end); Op(x, positive) -> value of one element.
template <typename scalar_t, typename Op>
void for_rows(const scalar_t* x, const int64_t* targets, int64_t begin, int64_t end, int64_t c,
              scalar_t* out, const Op& op) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t target = targets[i];
    const scalar_t* xi = x + i * c;
    scalar_t* oi = out + i * c;
    if (target < 0) {
      std::fill(oi, oi + c, scalar_t(0));
      continue;
    }
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) oi[j] = op(xi[j], false, i * c + j);
    if (target >= 1 && target <= c) oi[target - 1] = op(xi[target - 1], true, i * c + target - 1);
  }
}

template <typename scalar_t, typename Pow>
void forward_kernel(const at::Tensor& logits, const at::Tensor& targets, double gamma,
                    double alpha, at::Tensor& loss) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = logits.size(0), c = logits.size(1);
  const scalar_t* x = logits.data_ptr<scalar_t>();
  const int64_t* t = targets.data_ptr<int64_t>();
  scalar_t* out = loss.data_ptr<scalar_t>();
  const acc_t g = static_cast<acc_t>(gamma), a = static_cast<acc_t>(alpha);
  const auto op = [g, a](scalar_t v, bool positive, int64_t) {
    return static_cast<scalar_t>(
        focal_loss_value<acc_t, FastMath, Pow>(static_cast<acc_t>(v), positive, g, a));
  };
  at::parallel_for(0, n, std::max<int64_t>(1, kGrain / c), [&](int64_t begin, int64_t end) {
    for_rows(x, t, begin, end, c, out, op);
  });
}

template <typename scalar_t, typename Pow>
void backward_kernel(const at::Tensor& logits, const at::Tensor& targets,
                     const at::Tensor& grad_loss, double gamma, double alpha, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = logits.size(0), c = logits.size(1);
  const scalar_t* x = logits.data_ptr<scalar_t>();
  const scalar_t* go = grad_loss.data_ptr<scalar_t>();
  const int64_t* t = targets.data_ptr<int64_t>();
  scalar_t* out = grad.data_ptr<scalar_t>();
  const acc_t g = static_cast<acc_t>(gamma), a = static_cast<acc_t>(alpha);
  const auto op = [g, a, go](scalar_t v, bool positive, int64_t e) {
    return static_cast<scalar_t>(
        static_cast<acc_t>(go[e]) *
        focal_loss_grad<acc_t, FastMath, Pow>(static_cast<acc_t>(v), positive, g, a));
  };
  at::parallel_for(0, n, std::max<int64_t>(1, kGrain / c), [&](int64_t begin, int64_t end) {
    for_rows(x, t, begin, end, c, out, op);
  });
}

}  // namespace

at::Tensor sigmoid_focal_loss_forward_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                          double gamma, double alpha) {
  at::Tensor loss = at::empty_like(logits);
  if (loss.numel() == 0) return loss;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "atss_focal_loss_forward_cpu", [&] {
    if (gamma == 2.0) {
      forward_kernel<scalar_t, PowTwo>(logits, targets, gamma, alpha, loss);
    } else {
      forward_kernel<scalar_t, PowAny>(logits, targets, gamma, alpha, loss);
    }
  });
  return loss;
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                           const at::Tensor& grad_loss, double gamma,
                                           double alpha) {
  at::Tensor grad = at::empty_like(logits);
  if (grad.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "atss_focal_loss_backward_cpu", [&] {
    if (gamma == 2.0) {
      backward_kernel<scalar_t, PowTwo>(logits, targets, grad_loss, gamma, alpha, grad);
    } else {
      backward_kernel<scalar_t, PowAny>(logits, targets, grad_loss, gamma, alpha, grad);
    }
  });
  return grad;
}

}  // namespace atss
