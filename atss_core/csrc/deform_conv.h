// Geometry and bilinear sampling shared by the CPU and CUDA deformable convolution.
//
// Sampling rule (DCNv2): a point (h, w) with h <= -1, h >= H, w <= -1 or w >= W
// samples 0; otherwise the four integer neighbours are blended bilinearly and a
// neighbour outside the image reads 0.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace atss {

struct DeformGeometry {
  int64_t channels;     // input channels
  int64_t height, width;
  int64_t out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
  int64_t deformable_groups;

  C10_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }
  C10_HOST_DEVICE int64_t out_size() const { return out_h * out_w; }
  C10_HOST_DEVICE int64_t group_channels() const { return channels / deformable_groups; }
};

// Input plane `im` [H, W]; returns the DCNv2 bilinear sample at (h, w).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t dcn_bilinear(const scalar_t* im, int64_t H, int64_t W, acc_t h,
                                          acc_t w) {
  if (!(h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W))) return acc_t(0);
  const acc_t hf = std::floor(h), wf = std::floor(w);
  const int64_t h0 = static_cast<int64_t>(hf), w0 = static_cast<int64_t>(wf);
  const int64_t h1 = h0 + 1, w1 = w0 + 1;
  const acc_t lh = h - hf, lw = w - wf;
  const acc_t hh = acc_t(1) - lh, hw = acc_t(1) - lw;
  const acc_t v1 = (h0 >= 0 && w0 >= 0) ? acc_t(im[h0 * W + w0]) : acc_t(0);
  const acc_t v2 = (h0 >= 0 && w1 < W) ? acc_t(im[h0 * W + w1]) : acc_t(0);
  const acc_t v3 = (h1 < H && w0 >= 0) ? acc_t(im[h1 * W + w0]) : acc_t(0);
  const acc_t v4 = (h1 < H && w1 < W) ? acc_t(im[h1 * W + w1]) : acc_t(0);
  return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4;
}

// The sample at (h, w) and its derivatives d/dh, d/dw (one-sided at integer points,
// like the autograd of floor-based interpolation).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void dcn_bilinear_with_grad(const scalar_t* im, int64_t H, int64_t W,
                                                   acc_t h, acc_t w, acc_t* value, acc_t* grad_h,
                                                   acc_t* grad_w) {
  if (!(h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W))) {
    *value = *grad_h = *grad_w = acc_t(0);
    return;
  }
  const acc_t hf = std::floor(h), wf = std::floor(w);
  const int64_t h0 = static_cast<int64_t>(hf), w0 = static_cast<int64_t>(wf);
  const int64_t h1 = h0 + 1, w1 = w0 + 1;
  const acc_t lh = h - hf, lw = w - wf;
  const acc_t hh = acc_t(1) - lh, hw = acc_t(1) - lw;
  const acc_t v1 = (h0 >= 0 && w0 >= 0) ? acc_t(im[h0 * W + w0]) : acc_t(0);
  const acc_t v2 = (h0 >= 0 && w1 < W) ? acc_t(im[h0 * W + w1]) : acc_t(0);
  const acc_t v3 = (h1 < H && w0 >= 0) ? acc_t(im[h1 * W + w0]) : acc_t(0);
  const acc_t v4 = (h1 < H && w1 < W) ? acc_t(im[h1 * W + w1]) : acc_t(0);
  *value = hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4;
  *grad_h = hw * (v3 - v1) + lw * (v4 - v2);
  *grad_w = hh * (v2 - v1) + lh * (v4 - v3);
}

// The four neighbours of (h, w) that lie inside the image and their bilinear
// weights; returns how many were written (0 when the point samples 0).
template <typename acc_t>
C10_HOST_DEVICE inline int dcn_corners(int64_t H, int64_t W, acc_t h, acc_t w, int64_t* index,
                                       acc_t* weight) {
  if (!(h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W))) return 0;
  const acc_t hf = std::floor(h), wf = std::floor(w);
  const int64_t h0 = static_cast<int64_t>(hf), w0 = static_cast<int64_t>(wf);
  const acc_t lh = h - hf, lw = w - wf;
  int count = 0;
  for (int dy = 0; dy < 2; ++dy) {
    for (int dx = 0; dx < 2; ++dx) {
      const int64_t y = h0 + dy, x = w0 + dx;
      if (y >= 0 && y < H && x >= 0 && x < W) {
        index[count] = y * W + x;
        weight[count] = (dy ? lh : acc_t(1) - lh) * (dx ? lw : acc_t(1) - lw);
        ++count;
      }
    }
  }
  return count;
}

// Sampling position of tap (i, j) for output pixel (y, x), before the offset.
C10_HOST_DEVICE inline int64_t dcn_base_h(const DeformGeometry& g, int64_t y, int64_t i) {
  return y * g.stride_h - g.pad_h + i * g.dilation_h;
}
C10_HOST_DEVICE inline int64_t dcn_base_w(const DeformGeometry& g, int64_t x, int64_t j) {
  return x * g.stride_w - g.pad_w + j * g.dilation_w;
}

}  // namespace atss
