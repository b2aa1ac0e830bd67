"""The label set (models/labels.py): parsing, outputs and activation, losses, logits -> label map, checks."""
import numpy as np
import pytest
import torch

from fewshot_da.errors import InputError
from fewshot_da.models.labels import BINARY, LabelSet, label_set_of
from fewshot_da.training.losses import segmentation_loss


def test_binary_default_keeps_the_papers_setting():
    assert BINARY.names == ("background", "foreground") and BINARY.values == (0, 1)
    assert (BINARY.num_outputs, BINARY.activation, BINARY.default_loss()) == (1, "sigmoid", "bce")
    assert BINARY.metric_keys(["dice", "surface_dice_1mm"]) == ["dice", "surface_dice_1mm"]
    assert label_set_of({}) == BINARY and label_set_of({"labels": BINARY.as_dict()}) == BINARY


def test_binary_loss_and_mask_match_the_plain_path():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 1, 8, 8), (torch.rand(4, 1, 8, 8) > 0.5).float()
    for name in ("bce", "dice", "bce+dice"):
        plain = segmentation_loss(name)(logits, target)
        assert torch.equal(segmentation_loss(name, BINARY)(logits, target), plain)
        assert torch.allclose(BINARY.loss(name)(logits, target), plain)
    assert torch.equal(BINARY.to_mask(logits), (torch.sigmoid(logits[:, 0]) > 0.5).to(torch.uint8))


def test_parse_classes_and_regions():
    tissue = LabelSet.parse("background=0,csf=1,gm=2,wm=3")
    assert tissue.foreground == ("csf", "gm", "wm")
    assert (tissue.num_outputs, tissue.activation, tissue.default_loss()) == (4, "softmax", "ce+dice")
    assert tissue.metric_keys(["dice"]) == ["dice_csf", "dice_gm", "dice_wm"]
    regions = LabelSet.from_mapping({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]})
    assert regions.has_regions and (regions.num_outputs, regions.activation) == (3, "sigmoid")
    assert LabelSet.from_mapping(regions.as_dict()) == regions
    assert LabelSet.parse("background=0,brain=1+2+3").values == (0, (1, 2, 3))


@pytest.mark.parametrize("text, message", [
    ("csf=1,gm=2", "must be the background, value 0"),
    ("background=0", "at least one foreground"),
    ("background=0,csf=1,gm=1", "distinct"),
    ("background=0,csf", "is not NAME=VALUE"),
    ("background=0,1csf=1", "must start with a letter"),
])
def test_bad_label_sets_are_one_line_errors(text, message):
    with pytest.raises(InputError, match=message):
        LabelSet.parse(text)


def test_mask_values_outside_the_set_are_named():
    tissue = LabelSet.parse("background=0,csf=1,gm=2,wm=3")
    tissue.check_values([0, 1, 2, 3], "a.nii.gz")
    with pytest.raises(InputError, match=r"a.nii.gz: mask value 4 is not in the label set"):
        tissue.check_values([0, 4], "a.nii.gz")


def test_softmax_mask_is_the_argmax_mapped_to_values():
    labels = LabelSet.parse("background=0,csf=1,wm=3")
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 2, 0, 2] = 5.0
    assert labels.to_mask(logits).tolist() == [[[0, 1, 3]]]


def test_regions_are_painted_in_order():
    labels = LabelSet.from_mapping({"background": 0, "whole": [1, 2], "core": [2]})
    logits = torch.tensor([[[[5.0, 5.0, -5.0]], [[-5.0, 5.0, -5.0]]]])
    assert labels.to_mask(logits).tolist() == [[[1, 2, 0]]]
    target = torch.tensor([[[[1, 2, 0]]]])
    assert labels.region_targets(target).tolist() == [[[[1.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]]]]
    masks = labels.label_masks(np.array([1, 2, 0]))
    assert masks["whole"].tolist() == [True, True, False] and masks["core"].tolist() == [False, True, False]


def test_multiclass_loss_trains_a_tiny_net():
    """Learning signal: the label set's CE + Dice drives a 1x1-conv net to the right classes of a fixed image."""
    labels = LabelSet.parse("background=0,csf=1,gm=2,wm=3")
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 1, 8, 8))
    image = target.float() / 3 + 0.05 * torch.randn(2, 1, 8, 8)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
    loss_fn = segmentation_loss("ce+dice", labels)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    before = (labels.to_mask(net(image)) == target[:, 0]).float().mean().item()
    first = loss_fn(net(image), target).item()
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn(net(image), target)
        loss.backward()
        opt.step()
    after = (labels.to_mask(net(image)) == target[:, 0]).float().mean().item()
    assert loss.item() < 0.5 * first
    assert after > 0.95 > before


def test_sigmoid_losses_refuse_softmax_names():
    with pytest.raises(InputError, match="does not apply to sigmoid outputs"):
        BINARY.loss("ce")
    with pytest.raises(InputError, match="does not apply to softmax outputs"):
        LabelSet.parse("background=0,a=1,b=2").loss("bce")


def test_predict_volume_writes_a_label_map_from_a_list_output():
    """predict_volume with several labels: the full-resolution output of a deep-supervision list, argmax -> values."""
    from fewshot_da.predict import predict_volume

    labels = LabelSet.parse("background=0,csf=1,wm=3")

    class Net(torch.nn.Module):
        def forward(self, x):  # class k wins where the image is k / 2
            scores = torch.cat([-(x - k / 2) ** 2 for k in range(3)], dim=1)
            return [scores, scores[:, :, ::2, ::2]]

    image = np.array([[[0.0, 0.5, 1.0, 0.5, 0.0]]], dtype=np.float32).repeat(3, 1)
    mask = predict_volume(Net(), image, pad_multiple=8, labels=labels, channels_last=False)
    assert mask.shape == image.shape and mask[0, 0].tolist() == [0, 1, 3, 1, 0]
