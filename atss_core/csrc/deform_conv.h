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

// Bilinear sampling of one point (h, w) of an [H, W] plane, as its four integer
// neighbours (top-left, top-right, bottom-left, bottom-right): plane offsets, bilinear
// weights, whether each lies inside the image (1 or 0, used as a multiplier) and the
// fractional parts lh, lw. A point that samples 0 under the DCNv2 rule has every weight
// and flag 0 (and offsets 0, a valid address).
template <typename T>
struct SamplePoint {
  int64_t index[4];
  T weight[4];
  T inside[4];
  T lh, lw;
};

template <typename T>
C10_HOST_DEVICE inline SamplePoint<T> dcn_sample_point(int64_t H, int64_t W, T h, T w) {
  SamplePoint<T> s;
  if (!(h > T(-1) && h < T(H) && w > T(-1) && w < T(W))) {
    for (int e = 0; e < 4; ++e) {
      s.index[e] = 0;
      s.weight[e] = s.inside[e] = T(0);
    }
    s.lh = s.lw = T(0);
    return s;
  }
  const T hf = std::floor(h), wf = std::floor(w);
  const int64_t h0 = static_cast<int64_t>(hf), w0 = static_cast<int64_t>(wf);
  s.lh = h - hf;
  s.lw = w - wf;
  const T wy[2] = {T(1) - s.lh, s.lh}, wx[2] = {T(1) - s.lw, s.lw};
  for (int e = 0; e < 4; ++e) {
    const int64_t y = h0 + e / 2, x = w0 + e % 2;
    const bool in = y >= 0 && y < H && x >= 0 && x < W;
    s.index[e] = in ? y * W + x : 0;
    s.inside[e] = in ? T(1) : T(0);
    s.weight[e] = in ? wy[e / 2] * wx[e % 2] : T(0);
  }
  return s;
}

// The sampled value of plane `im`.
template <typename scalar_t, typename T>
C10_HOST_DEVICE inline T dcn_sample_value(const scalar_t* im, const SamplePoint<T>& s) {
  return s.weight[0] * T(im[s.index[0]]) + s.weight[1] * T(im[s.index[1]]) +
         s.weight[2] * T(im[s.index[2]]) + s.weight[3] * T(im[s.index[3]]);
}

// The sampled value of plane `im` and its derivatives with respect to h and w
// (one-sided at integer points, like the autograd of floor-based interpolation).
template <typename scalar_t, typename T>
C10_HOST_DEVICE inline void dcn_sample_with_grad(const scalar_t* im, const SamplePoint<T>& s,
                                                 T* value, T* grad_h, T* grad_w) {
  T v[4];
  for (int e = 0; e < 4; ++e) v[e] = s.inside[e] * T(im[s.index[e]]);
  *value = s.weight[0] * v[0] + s.weight[1] * v[1] + s.weight[2] * v[2] + s.weight[3] * v[3];
  *grad_h = (T(1) - s.lw) * (v[2] - v[0]) + s.lw * (v[3] - v[1]);
  *grad_w = (T(1) - s.lh) * (v[1] - v[0]) + s.lh * (v[3] - v[2]);
}

// Sampling position of tap (i, j) for output pixel (y, x), before the offset.
C10_HOST_DEVICE inline int64_t dcn_base_h(const DeformGeometry& g, int64_t y, int64_t i) {
  return y * g.stride_h - g.pad_h + i * g.dilation_h;
}
C10_HOST_DEVICE inline int64_t dcn_base_w(const DeformGeometry& g, int64_t x, int64_t j) {
  return x * g.stride_w - g.pad_w + j * g.dilation_w;
}

}  // namespace atss
