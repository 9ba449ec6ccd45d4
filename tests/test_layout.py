"""Channels-last layout: the same outputs, and graphs that cannot run so are left as they were."""
import torch
import torch.nn as nn

from graftkit.layout import channels_last, to_channels_last


class ViewsNCHW(nn.Module):
    """A converted-graph habit: flatten with .view, which needs NCHW-contiguous activations."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))


def test_a_network_runs_channels_last_with_the_same_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        assert to_channels_last(net, (3, 16, 16))
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not net[0].weight.is_contiguous()
        got = net(channels_last(x))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not net.training  # the mode it had is kept


def test_a_graph_that_views_nchw_is_left_as_it_was():
    net = ViewsNCHW().train()
    assert not to_channels_last(net, (3, 8, 8))
    assert net.conv.weight.is_contiguous()
    assert net.training  # the probe's eval() is undone
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 2)


def test_networks_without_convolutions_are_not_touched():
    net = nn.Linear(3, 2)
    assert not to_channels_last(net, (3,))
    assert channels_last(torch.randn(2, 3)).is_contiguous()


def test_evaluate_predict_and_features_give_the_callers_module_back_in_its_own_layout(tmp_path):
    import graftkit
    from PIL import Image
    from safetensors.torch import save_file
    for c in ("tench", "goldfish"):  # (ImageNet class names: evaluate checks them)
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (60 * i, 100 if c == "tench" else 0, 30)).save(tmp_path / "data" / c / f"{i}.png")
    from graftkit.serve import evaluate, predict
    net = graftkit.resolve("lite0")
    evaluate(net, tmp_path / "data", progress=False)
    predict(net, [str(tmp_path / "data" / "tench" / "0.png")], progress=False)
    graftkit.features(net, tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert all(p.is_contiguous() for p in net.parameters())
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))  # refuses non-contiguous tensors
