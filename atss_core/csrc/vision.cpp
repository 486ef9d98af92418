// atss_core._C: operator schemas (namespace "atss"), their CPU / CUDA
// registrations and the Python module. The Python layer (atss_core/layers)
// attaches autograd formulas and fake-tensor rules to these operators.
#include <torch/extension.h>
#include <torch/library.h>

#include "kernels.h"

namespace atss {

namespace {

using NmsImpl = at::Tensor (*)(const at::Tensor&, const at::Tensor&,
                               const c10::optional<at::Tensor>&, double);

void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be [N, 4], got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "scores must be [",
              boxes.size(0), "], got ", scores.sizes());
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(), "boxes and scores must have the same "
              "dtype, got ", boxes.scalar_type(), " and ", scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "boxes and scores must be on the same device");
}

template <NmsImpl Impl>
at::Tensor nms_op(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  return Impl(boxes.contiguous(), scores.contiguous(), c10::nullopt, iou_threshold);
}

template <NmsImpl Impl>
at::Tensor ml_nms_op(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                     double iou_threshold) {
  check_nms_inputs(boxes, scores);
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == boxes.size(0), "labels must be [",
              boxes.size(0), "], got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.device() == boxes.device(), "labels must be on the device of boxes");
  return Impl(boxes.contiguous(), scores.contiguous(), labels.contiguous(), iou_threshold);
}

void check_focal_inputs(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2, "logits must be [N, C], got ", logits.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), "targets must be [",
              logits.size(0), "], got ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "targets must be int64, got ",
              targets.scalar_type());
  TORCH_CHECK(targets.device() == logits.device(), "targets must be on the device of logits");
}

using FocalForward = at::Tensor (*)(const at::Tensor&, const at::Tensor&, double, double);
using FocalBackward = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     double, double);

template <FocalForward Impl>
at::Tensor focal_forward_op(const at::Tensor& logits, const at::Tensor& targets, double gamma,
                            double alpha) {
  check_focal_inputs(logits, targets);
  return Impl(logits.contiguous(), targets.contiguous(), gamma, alpha);
}

template <FocalBackward Impl>
at::Tensor focal_backward_op(const at::Tensor& logits, const at::Tensor& targets,
                             const at::Tensor& grad_loss, double gamma, double alpha) {
  check_focal_inputs(logits, targets);
  TORCH_CHECK(grad_loss.sizes() == logits.sizes(), "grad_loss must have the shape of logits ",
              logits.sizes(), ", got ", grad_loss.sizes());
  return Impl(logits.contiguous(), targets.contiguous(),
              grad_loss.to(logits.scalar_type()).contiguous(), gamma, alpha);
}

}  // namespace

TORCH_LIBRARY(atss, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("ml_nms(Tensor boxes, Tensor scores, Tensor labels, float iou_threshold) -> Tensor");
  m.def("sigmoid_focal_loss_forward(Tensor logits, Tensor targets, float gamma, float alpha) "
        "-> Tensor");
  m.def("sigmoid_focal_loss_backward(Tensor logits, Tensor targets, Tensor grad_loss, "
        "float gamma, float alpha) -> Tensor");
  m.def("modulated_deform_conv_forward(Tensor input, Tensor offset, Tensor mask, Tensor weight, "
        "Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "int deformable_groups) -> Tensor");
  m.def("modulated_deform_conv_backward(Tensor grad_output, Tensor input, Tensor offset, "
        "Tensor mask, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, int deformable_groups) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(atss, CPU, m) {
  m.impl("nms", &nms_op<nms_cpu>);
  m.impl("ml_nms", &ml_nms_op<nms_cpu>);
  m.impl("sigmoid_focal_loss_forward", &focal_forward_op<sigmoid_focal_loss_forward_cpu>);
  m.impl("sigmoid_focal_loss_backward", &focal_backward_op<sigmoid_focal_loss_backward_cpu>);
  m.impl("modulated_deform_conv_forward", &modulated_deform_conv_forward);
  m.impl("modulated_deform_conv_backward", &modulated_deform_conv_backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(atss, CUDA, m) {
  m.impl("nms", &nms_op<nms_cuda>);
  m.impl("ml_nms", &ml_nms_op<nms_cuda>);
  m.impl("sigmoid_focal_loss_forward", &focal_forward_op<sigmoid_focal_loss_forward_cuda>);
  m.impl("sigmoid_focal_loss_backward", &focal_backward_op<sigmoid_focal_loss_backward_cuda>);
  m.impl("modulated_deform_conv_forward", &modulated_deform_conv_forward);
  m.impl("modulated_deform_conv_backward", &modulated_deform_conv_backward);
}
#endif

}  // namespace atss

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled kernels of atss_core; the operators are in torch.ops.atss";
  m.def("with_cuda", [] {
#ifdef WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernels were compiled in");
}
