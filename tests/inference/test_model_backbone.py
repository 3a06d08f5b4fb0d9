"""Real EfficientNet-Lite weights (installed with the project)."""

import cv2
import pytest
import torch

from inference.model.backbones import LITE_MEAN, LITE_STD, build_backbone, lite_weights_path
from lineinspect.errors import ConfigError


def test_loaded_weights_equal_the_package_file():
    bb = build_backbone("efficientnet_lite0", [3, 4, 7, 10])
    ref = torch.load(lite_weights_path("efficientnet-lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(bb.stem[0].weight, ref["_conv_stem.weight"])
    assert torch.equal(bb.trunk[10]._project_conv.weight, ref["_blocks.10._project_conv.weight"])
    feats = bb(torch.rand(1, 3, 256, 256))
    assert [f.shape[1:] for f in feats] == [(40, 32, 32), (40, 32, 32), (80, 16, 16), (112, 16, 16)]


def test_known_image_classifies_sensibly_with_lite_normalisation():
    """The Lite weights expect [-1, 1] inputs: sklearn's daisy photo must come out as 'daisy' (985)."""
    datasets = pytest.importorskip("sklearn.datasets")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite_weights_path("efficientnet-lite0"))).eval()
    img = cv2.resize(datasets.load_sample_image("flower.jpg"), (224, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert int(net(x).argmax()) == 985


def test_unknown_backbone_and_missing_dino_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("resnet9000", [1])
    with pytest.raises(ConfigError, match="local checkpoint"):
        build_backbone("dinov2_vits14", [4, 5], checkpoint=tmp_path / "missing.pth")
