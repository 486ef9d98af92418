"""BoxList, box ops and ImageList with the reference's conventions."""
import pytest
import torch

from atss_core.structures.bounding_box import FLIP_LEFT_RIGHT, BoxList
from atss_core.structures.boxlist_ops import box_iou, boxlist_iou, cat_boxlist, remove_small_boxes
from atss_core.structures.image_list import ImageList, to_image_list


def boxes():
    b = BoxList(torch.tensor([[0.0, 0.0, 9.0, 19.0], [5.0, 5.0, 14.0, 14.0]]), (20, 30))
    b.add_field("labels", torch.tensor([1, 2]))
    return b


def test_convert_round_trip_with_plus_one():
    b = boxes()
    xywh = b.convert("xywh")
    assert xywh.bbox.tolist() == [[0, 0, 10, 20], [5, 5, 10, 10]]
    assert torch.equal(xywh.convert("xyxy").bbox, b.bbox)
    assert torch.equal(xywh.get_field("labels"), b.get_field("labels"))
    assert b.area().tolist() == [200, 100] and xywh.area().tolist() == [200, 100]


def test_resize_is_a_pure_ratio():
    r = boxes().resize((40, 15))
    assert r.size == (40, 15)
    assert r.bbox.tolist() == [[0, 0, 18, 9.5], [10, 2.5, 28, 7]]


def test_flip_left_right_uses_plus_one():
    f = boxes().transpose(FLIP_LEFT_RIGHT)
    assert f.bbox.tolist() == [[10, 0, 19, 19], [5, 5, 14, 14]]
    assert torch.equal(f.transpose(FLIP_LEFT_RIGHT).bbox, boxes().bbox)


def test_clip_and_remove_empty():
    b = BoxList(torch.tensor([[-5.0, -5.0, 30.0, 40.0], [25.0, 0.0, 30.0, 5.0]]), (20, 30))
    b.add_field("scores", torch.tensor([0.5, 0.9]))
    kept = b.clip_to_image(remove_empty=True)
    assert kept.bbox.tolist() == [[0, 0, 19, 29]] and kept.get_field("scores").tolist() == [0.5]
    assert len(b.clip_to_image(remove_empty=False)) == 2


def test_indexing_slices_fields():
    b = boxes()
    sub = b[torch.tensor([False, True])]
    assert len(sub) == 1 and sub.get_field("labels").tolist() == [2]
    assert b.copy_with_fields(["labels"]).fields() == ["labels"]
    with pytest.raises(KeyError):
        b.copy_with_fields(["scores"])


def test_iou_plus_one_convention():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0], [10.0, 10.0, 20.0, 20.0]])
    iou = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1.0, 50 / 150, 0.0]]))
    with pytest.raises(ValueError):
        boxlist_iou(BoxList(a, (10, 10)), BoxList(b, (20, 20)))


def test_cat_and_remove_small():
    b = cat_boxlist([boxes(), boxes()])
    assert len(b) == 4 and b.get_field("labels").tolist() == [1, 2, 1, 2]
    small = BoxList(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 5.0, 5.0]]), (10, 10))
    assert len(remove_small_boxes(small, 3)) == 1


def test_bad_boxlist_inputs():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        BoxList(torch.zeros(3, 5), (10, 10))
    with pytest.raises(ValueError, match="mode"):
        BoxList(torch.zeros(3, 4), (10, 10), mode="cxcywh")
    assert len(BoxList(torch.zeros(0), (10, 10))) == 0


def test_to_image_list_pads_to_divisibility():
    imgs = [torch.ones(3, 10, 17), torch.full((3, 21, 5), 2.0)]
    il = to_image_list(imgs, 8)
    assert il.tensors.shape == (2, 3, 24, 24)
    assert il.image_sizes == [(10, 17), (21, 5)]
    assert float(il.tensors[0, :, 10:].abs().sum()) == 0 and float(il.tensors[0, :, :10, :17].mean()) == 1
    assert to_image_list(il) is il
    assert isinstance(to_image_list(torch.zeros(2, 3, 8, 8)), ImageList)
    with pytest.raises(ValueError):
        to_image_list([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
