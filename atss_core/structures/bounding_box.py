"""``BoxList``: the boxes of one image, with per-box fields.

Conventions (those of the reference framework, kept so that results match it):

* ``bbox`` is a float tensor [N, 4] in ``mode`` "xyxy" (x1, y1, x2, y2) or
  "xywh" (x, y, width, height), in pixels of the image of ``size``.
* ``size`` is (width, height) of that image.
* Pixel boxes are inclusive: an xyxy box covers x1..x2, so its width is
  ``x2 - x1 + 1`` (the "+1" convention) in ``area()``, ``convert()``,
  ``transpose()`` and ``clip_to_image()``.
* Extra fields (``labels``, ``scores``, ...) are tensors whose first dimension
  indexes the boxes; indexing a BoxList indexes them too.
"""
import torch

FLIP_LEFT_RIGHT = 0
FLIP_TOP_BOTTOM = 1

_TO_REMOVE = 1  # the +1 of inclusive pixel boxes


class BoxList:
    """Boxes of one image: ``bbox`` [N, 4], ``size`` (w, h), ``mode``, and fields."""

    def __init__(self, bbox, image_size, mode="xyxy"):
        device = bbox.device if isinstance(bbox, torch.Tensor) else torch.device("cpu")
        bbox = torch.as_tensor(bbox, dtype=torch.float32, device=device)
        if bbox.ndim == 1 and bbox.numel() == 0:
            bbox = bbox.reshape(0, 4)
        if bbox.ndim != 2 or bbox.size(-1) != 4:
            raise ValueError(f"BoxList needs boxes of shape [N, 4], got {tuple(bbox.shape)}")
        if mode not in ("xyxy", "xywh"):
            raise ValueError(f"BoxList mode must be 'xyxy' or 'xywh', got {mode!r}")
        self.bbox = bbox
        self.size = (int(image_size[0]), int(image_size[1]))  # (width, height)
        self.mode = mode
        self.extra_fields = {}

    # ---------------------------------------------------------------- fields
    def add_field(self, field, field_data):
        self.extra_fields[field] = field_data

    def get_field(self, field):
        return self.extra_fields[field]

    def has_field(self, field):
        return field in self.extra_fields

    def fields(self):
        return list(self.extra_fields.keys())

    def _copy_extra_fields(self, other):
        for k, v in other.extra_fields.items():
            self.extra_fields[k] = v

    def copy_with_fields(self, fields, skip_missing=False):
        out = BoxList(self.bbox, self.size, self.mode)
        for field in [fields] if isinstance(fields, str) else fields:
            if self.has_field(field):
                out.add_field(field, self.get_field(field))
            elif not skip_missing:
                raise KeyError(f"field '{field}' not found in {self}")
        return out

    # ------------------------------------------------------------ geometry
    def _split_into_xyxy(self):
        if self.mode == "xyxy":
            return self.bbox.split(1, dim=-1)
        x, y, w, h = self.bbox.split(1, dim=-1)
        return x, y, x + (w - _TO_REMOVE).clamp(min=0), y + (h - _TO_REMOVE).clamp(min=0)

    def convert(self, mode):
        """The same boxes in ``mode`` ("xyxy" or "xywh"), fields shared."""
        if mode not in ("xyxy", "xywh"):
            raise ValueError(f"BoxList mode must be 'xyxy' or 'xywh', got {mode!r}")
        if mode == self.mode:
            return self
        x1, y1, x2, y2 = self._split_into_xyxy()
        if mode == "xyxy":
            bbox = torch.cat((x1, y1, x2, y2), dim=-1)
        else:
            bbox = torch.cat((x1, y1, x2 - x1 + _TO_REMOVE, y2 - y1 + _TO_REMOVE), dim=-1)
        out = BoxList(bbox, self.size, mode=mode)
        out._copy_extra_fields(self)
        return out

    def resize(self, size):
        """Scale the boxes to an image of ``size`` (w, h) (no +1: pure ratios)."""
        ratio_w = float(size[0]) / float(self.size[0])
        ratio_h = float(size[1]) / float(self.size[1])
        scale = self.bbox.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
        out = BoxList(self.bbox * scale, size, mode=self.mode)
        out._copy_extra_fields(self)
        return out

    def transpose(self, method):
        """Flip the boxes left-right (``FLIP_LEFT_RIGHT``) or top-bottom."""
        if method not in (FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM):
            raise ValueError("only FLIP_LEFT_RIGHT and FLIP_TOP_BOTTOM are supported")
        width, height = self.size
        x1, y1, x2, y2 = self._split_into_xyxy()
        if method == FLIP_LEFT_RIGHT:
            bbox = torch.cat((width - x2 - _TO_REMOVE, y1, width - x1 - _TO_REMOVE, y2), dim=-1)
        else:
            bbox = torch.cat((x1, height - y2, x2, height - y1), dim=-1)
        out = BoxList(bbox, self.size, mode="xyxy")
        out._copy_extra_fields(self)
        return out.convert(self.mode)

    def crop(self, box):
        """Crop to ``box`` (x1, y1, x2, y2); boxes are clipped to the crop."""
        x1, y1, x2, y2 = self._split_into_xyxy()
        w, h = box[2] - box[0], box[3] - box[1]
        bbox = torch.cat(
            (
                (x1 - box[0]).clamp(min=0, max=w),
                (y1 - box[1]).clamp(min=0, max=h),
                (x2 - box[0]).clamp(min=0, max=w),
                (y2 - box[1]).clamp(min=0, max=h),
            ),
            dim=-1,
        )
        out = BoxList(bbox, (w, h), mode="xyxy")
        out._copy_extra_fields(self)
        return out.convert(self.mode)

    def clip_to_image(self, remove_empty=True):
        """Clamp xyxy boxes to the image (0..w-1, 0..h-1); optionally drop boxes
        left with x2 <= x1 or y2 <= y1."""
        if self.mode != "xyxy":
            return self.convert("xyxy").clip_to_image(remove_empty).convert(self.mode)
        w, h = self.size
        bbox = torch.stack(
            (
                self.bbox[:, 0].clamp(min=0, max=w - _TO_REMOVE),
                self.bbox[:, 1].clamp(min=0, max=h - _TO_REMOVE),
                self.bbox[:, 2].clamp(min=0, max=w - _TO_REMOVE),
                self.bbox[:, 3].clamp(min=0, max=h - _TO_REMOVE),
            ),
            dim=1,
        )
        out = BoxList(bbox, self.size, self.mode)
        out._copy_extra_fields(self)
        if remove_empty:
            keep = (bbox[:, 3] > bbox[:, 1]) & (bbox[:, 2] > bbox[:, 0])
            return out[keep]
        return out

    def area(self):
        """Areas [N] with the +1 convention."""
        if self.mode == "xyxy":
            b = self.bbox
            return (b[:, 2] - b[:, 0] + _TO_REMOVE) * (b[:, 3] - b[:, 1] + _TO_REMOVE)
        return self.bbox[:, 2] * self.bbox[:, 3]

    # -------------------------------------------------------------- plumbing
    def to(self, device):
        out = BoxList(self.bbox.to(device), self.size, self.mode)
        for k, v in self.extra_fields.items():
            out.add_field(k, v.to(device) if hasattr(v, "to") else v)
        return out

    def __getitem__(self, item):
        out = BoxList(self.bbox[item], self.size, self.mode)
        for k, v in self.extra_fields.items():
            out.add_field(k, v[item])
        return out

    def __len__(self):
        return self.bbox.shape[0]

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(num_boxes={len(self)}, image_width={self.size[0]}, "
            f"image_height={self.size[1]}, mode={self.mode})"
        )
