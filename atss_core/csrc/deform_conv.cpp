// Device-agnostic driver of modulated deformable convolution (DCNv2): the
// device-specific column primitives (cpu/, cuda/) plus grouped matmuls.
//
// Images are processed in chunks whose column buffer [C_in * K, chunk * L]
// stays under kColumnBudget elements.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "kernels.h"

namespace atss {

namespace {

constexpr int64_t kColumnBudget = int64_t(1) << 26;

DeformGeometry check_arguments(const at::Tensor& input, const at::Tensor& offset,
                               const at::Tensor& mask, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups, int64_t dg) {
  TORCH_CHECK(input.dim() == 4, "input must be [N, C_in, H, W], got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "weight must be [C_out, C_in / groups, kh, kw], got ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride, padding and dilation must have 2 elements");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 &&
                  padding[0] >= 0 && padding[1] >= 0,
              "need stride >= 1, dilation >= 1 and padding >= 0");
  TORCH_CHECK(groups >= 1 && dg >= 1, "groups and deformable_groups must be >= 1");
  for (const at::Tensor* t : {&offset, &mask, &weight}) {
    TORCH_CHECK(t->scalar_type() == input.scalar_type(), "offset, mask and weight must have the ",
                "dtype of input (", input.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == input.device(), "offset, mask and weight must be on ",
                input.device(), ", got ", t->device());
  }
  DeformGeometry g;
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.deformable_groups = dg;
  g.out_h = (g.height + 2 * g.pad_h - (g.dilation_h * (g.kernel_h - 1) + 1)) / g.stride_h + 1;
  g.out_w = (g.width + 2 * g.pad_w - (g.dilation_w * (g.kernel_w - 1) + 1)) / g.stride_w + 1;
  const int64_t n = input.size(0), c_out = weight.size(0), K = g.taps();
  TORCH_CHECK(g.out_h >= 1 && g.out_w >= 1, "input ", g.height, "x", g.width,
              " is too small for the kernel");
  TORCH_CHECK(g.channels % groups == 0 && c_out % groups == 0 &&
                  weight.size(1) * groups == g.channels,
              "weight ", weight.sizes(), " does not fit ", g.channels,
              " input channels with groups=", groups);
  TORCH_CHECK(g.channels % dg == 0, "input channels ", g.channels,
              " are not divisible by deformable_groups=", dg);
  TORCH_CHECK(offset.sizes() == at::IntArrayRef({n, 2 * dg * K, g.out_h, g.out_w}),
              "offset must be [", n, ", ", 2 * dg * K, ", ", g.out_h, ", ", g.out_w, "], got ",
              offset.sizes());
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({n, dg * K, g.out_h, g.out_w}), "mask must be [",
              n, ", ", dg * K, ", ", g.out_h, ", ", g.out_w, "], got ", mask.sizes());
  return g;
}

int64_t chunk_size(const DeformGeometry& g, int64_t n) {
  const int64_t per_image = g.channels * g.taps() * g.out_size();
  return std::max<int64_t>(1, std::min<int64_t>(n, kColumnBudget / std::max<int64_t>(per_image, 1)));
}

void im2col(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
            const DeformGeometry& g, int64_t batch, at::Tensor& columns) {
#ifdef WITH_CUDA
  if (input.is_cuda()) return deform_im2col_cuda(input, offset, mask, g, batch, columns);
#endif
  deform_im2col_cpu(input, offset, mask, g, batch, columns);
}

void col2im(const at::Tensor& grad_columns, const at::Tensor& offset, const at::Tensor& mask,
            const DeformGeometry& g, int64_t batch, at::Tensor& grad_input) {
#ifdef WITH_CUDA
  if (offset.is_cuda()) return deform_col2im_cuda(grad_columns, offset, mask, g, batch, grad_input);
#endif
  deform_col2im_cpu(grad_columns, offset, mask, g, batch, grad_input);
}

void col2im_coord(const at::Tensor& grad_columns, const at::Tensor& input,
                  const at::Tensor& offset, const at::Tensor& mask, const DeformGeometry& g,
                  int64_t batch, at::Tensor& grad_offset, at::Tensor& grad_mask) {
#ifdef WITH_CUDA
  if (input.is_cuda()) {
    return deform_col2im_coord_cuda(grad_columns, input, offset, mask, g, batch, grad_offset,
                                    grad_mask);
  }
#endif
  deform_col2im_coord_cpu(grad_columns, input, offset, mask, g, batch, grad_offset, grad_mask);
}

}  // namespace

at::Tensor modulated_deform_conv_forward(const at::Tensor& input_, const at::Tensor& offset_,
                                         const at::Tensor& mask_, const at::Tensor& weight_,
                                         const c10::optional<at::Tensor>& bias,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation, int64_t groups,
                                         int64_t deformable_groups) {
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.contiguous(), weight = weight_.contiguous();
  const DeformGeometry g = check_arguments(input, offset, mask, weight, stride, padding, dilation,
                                           groups, deformable_groups);
  const int64_t n = input.size(0), c_out = weight.size(0), L = g.out_size();
  const int64_t ck = g.channels / groups * g.taps();
  at::Tensor output = at::empty({n, c_out, g.out_h, g.out_w}, input.options());
  const at::Tensor w = weight.view({groups, c_out / groups, ck});
  const int64_t step = chunk_size(g, n);
  for (int64_t n0 = 0; n0 < n; n0 += step) {
    const int64_t b = std::min(step, n - n0);
    at::Tensor columns = at::empty({g.channels * g.taps(), b * L}, input.options());
    im2col(input.narrow(0, n0, b), offset.narrow(0, n0, b), mask.narrow(0, n0, b), g, b, columns);
    const at::Tensor result = at::matmul(w, columns.view({groups, ck, b * L}));
    output.narrow(0, n0, b).copy_(result.view({c_out, b, g.out_h, g.out_w}).transpose(0, 1));
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c_out, "bias must be [", c_out, "], got ",
                bias->sizes());
    output.add_(bias->view({1, c_out, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_deform_conv_backward(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_,
    const at::Tensor& mask_, const at::Tensor& weight_, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deformable_groups) {
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.contiguous(), weight = weight_.contiguous();
  const DeformGeometry g = check_arguments(input, offset, mask, weight, stride, padding, dilation,
                                           groups, deformable_groups);
  const int64_t n = input.size(0), c_out = weight.size(0), L = g.out_size();
  const int64_t ck = g.channels / groups * g.taps();
  TORCH_CHECK(grad_output_.sizes() == at::IntArrayRef({n, c_out, g.out_h, g.out_w}),
              "grad_output has shape ", grad_output_.sizes(), ", expected the output's shape");
  const at::Tensor grad_output = grad_output_.to(input.scalar_type()).contiguous();

  // Accumulators in the op-math dtype (float for half/bfloat16 inputs).
  const auto acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
  at::Tensor grad_weight = at::zeros({groups, c_out / groups, ck}, weight.options().dtype(acc_type));
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = at::empty_like(mask);
  const at::Tensor w_t = weight.view({groups, c_out / groups, ck}).transpose(1, 2);
  const int64_t step = chunk_size(g, n);
  for (int64_t n0 = 0; n0 < n; n0 += step) {
    const int64_t b = std::min(step, n - n0);
    const at::Tensor in_b = input.narrow(0, n0, b), off_b = offset.narrow(0, n0, b);
    const at::Tensor mask_b = mask.narrow(0, n0, b);
    // grad_output chunk as [groups, C_out / groups, b * L].
    const at::Tensor go = grad_output.narrow(0, n0, b)
                              .view({b, c_out, L})
                              .transpose(0, 1)
                              .reshape({groups, c_out / groups, b * L});
    at::Tensor grad_columns = at::matmul(w_t, go).view({g.channels * g.taps(), b * L});
    at::Tensor grad_off_b = grad_offset.narrow(0, n0, b), grad_mask_b = grad_mask.narrow(0, n0, b);
    col2im_coord(grad_columns, in_b, off_b, mask_b, g, b, grad_off_b, grad_mask_b);
    at::Tensor grad_in_b = grad_input.narrow(0, n0, b);
    col2im(grad_columns, off_b, mask_b, g, b, grad_in_b);
    at::Tensor columns = std::move(grad_columns);  // reuse the buffer
    im2col(in_b, off_b, mask_b, g, b, columns);
    grad_weight.add_(at::matmul(go, columns.view({groups, ck, b * L}).transpose(1, 2)));
  }
  return {grad_input.to(input.scalar_type()), grad_offset, grad_mask,
          grad_weight.view(weight.sizes()).to(weight.scalar_type())};
}

}  // namespace atss
