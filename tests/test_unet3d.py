import pytest
import torch

from unet3d import UNet3D


def double_conv_params(c_in, c_out):
    return 27 * c_in * c_out + 27 * c_out * c_out + 2 * 2 * c_out     # two bias-free convs, two BNs


def test_output_shape_and_parameter_count():
    net = UNet3D()
    x = torch.randn(2, 2, 16, 24, 8)
    assert net(x).shape == (2, 1, 16, 24, 8)
    expected = (double_conv_params(2, 32) + double_conv_params(32, 64) + double_conv_params(64, 128)
                + double_conv_params(128, 256)
                + 8 * 256 * 128 + 128 + double_conv_params(256, 128)
                + 8 * 128 * 64 + 64 + double_conv_params(128, 64)
                + 8 * 64 * 32 + 32 + double_conv_params(64, 32)
                + 32 + 1)
    assert sum(p.numel() for p in net.parameters()) == expected == 5_601_985


def test_constructor_arguments():
    net = UNet3D(in_channels=1, out_channels=3, widths=(4, 8, 16), bottleneck=32,
                 dropout=(0.0, 0.0, 0.0), bottleneck_dropout=0.5, negative_slope=0.2)
    assert net(torch.randn(2, 1, 8, 8, 8)).shape == (2, 3, 8, 8, 8)
    assert net.bottleneck[3].p == 0.5 and net.encoders[0][2].negative_slope == 0.2


def test_gradient_reaches_every_layer():
    torch.manual_seed(0)
    net = UNet3D(widths=(4, 8, 16), bottleneck=32).train()
    out = net(torch.randn(2, 2, 16, 16, 8))
    (out ** 2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shape,match", [
    ((1, 2, 12, 16, 16), "divisible by 8"),
    ((1, 2, 16, 16, 20), "divisible by 8 \\(three 2x poolings\\), got \\(16, 16, 20\\)"),
    ((1, 3, 16, 16, 16), "expected \\(B, 2, X, Y, Z\\), got \\(1, 3, 16, 16, 16\\)"),
    ((2, 16, 16, 16), "expected \\(B, 2, X, Y, Z\\)"),
])
def test_bad_input_rejected(shape, match):
    with pytest.raises(ValueError, match=match):
        UNet3D()(torch.randn(*shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="expected 3 values each \\(three levels\\), got \\(32, 64\\)"):
        UNet3D(widths=(32, 64))


def test_channels_last_gives_the_contiguous_output():
    # channels_last_3d (the CUDA default) is a memory layout: the same network, the same logits
    torch.manual_seed(0)
    net = UNet3D(widths=(4, 8, 16), bottleneck=32).eval()
    x = torch.randn(2, 2, 16, 16, 8)
    expected = net(x)
    fast = net.to(memory_format=torch.channels_last_3d)
    assert fast.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last_3d)), expected,
                               rtol=1e-4, atol=1e-5)
