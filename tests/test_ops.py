import pytest
import torch

from darts_sg.utils.errors import UserError
from darts_sg.model.ops import (
    CLASSIC_PRIMITIVES,
    OP_FACTORIES,
    SEARCH_SPACES,
    InvertedResidual,
    OpOptions,
    SandGlass,
    build_op,
    resolve_space,
    sandglass_hidden_width,
)


@pytest.mark.parametrize("name", list(OP_FACTORIES))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_applies_stride(name, stride):
    op = build_op(name, 8, stride, affine=False)
    y = op(torch.randn(2, 8, 8, 8))
    assert y.shape == (2, 8, 8 // stride, 8 // stride)


def test_none_is_zero():
    assert build_op("none", 4, 2, False)(torch.randn(1, 4, 8, 8)).abs().sum() == 0


def test_classic_primitives_are_the_dart_eight():
    assert CLASSIC_PRIMITIVES == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    )  # fmt: skip
    assert SEARCH_SPACES["sgblock"] == CLASSIC_PRIMITIVES + ("sg_block",)
    assert SEARCH_SPACES["invres"] == CLASSIC_PRIMITIVES + ("inv_res",)


def test_sandglass_layers_follow_mobilenext():
    block = SandGlass(48, 48, 1, True, OpOptions(sg_ratio=6))
    convs = [m for m in block.body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in convs] == [
        (48, 48, (3, 3), 48),  # depthwise at the wide width
        (48, 8, (1, 1), 1),  # reduce by t
        (8, 48, (1, 1), 1),  # expand back
        (48, 48, (3, 3), 48),  # depthwise at the wide width, carries the stride
    ]
    acts = [type(m).__name__ for m in block.body if not isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    assert acts == ["ReLU6", "ReLU6"]  # the bottleneck and the output are linear
    assert block.use_shortcut


def test_sandglass_hidden_width_floor():
    assert sandglass_hidden_width(16, OpOptions()) == 8  # 16/6 would collapse to 3
    assert sandglass_hidden_width(144, OpOptions()) == 24
    assert sandglass_hidden_width(16, OpOptions(sg_min_hidden=2)) == 3
    assert sandglass_hidden_width(4, OpOptions()) == 4  # never wider than the input


def test_sandglass_identity_multiplier_adds_shortcut_to_a_share_of_channels():
    block = SandGlass(8, 8, 1, False, OpOptions(sg_identity=0.5)).eval()
    x = torch.randn(2, 8, 6, 6)
    body = block.body(x)
    y = block(x)
    torch.testing.assert_close(y[:, :4], body[:, :4] + x[:, :4])
    torch.testing.assert_close(y[:, 4:], body[:, 4:])


def test_sandglass_has_no_shortcut_at_stride_2():
    block = SandGlass(8, 8, 2, False, OpOptions()).eval()
    x = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(block(x), block.body(x))


def test_inverted_residual_layers():
    block = InvertedResidual(8, 8, 1, True, OpOptions(ir_expansion=6))
    convs = [m for m in block.body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.groups) for c in convs] == [(8, 48, 1), (48, 48, 48), (48, 8, 1)]
    assert block.use_shortcut


def test_unknown_op_lists_valid_ones():
    with pytest.raises(UserError, match="unknown op 'conv_7x7'.*sep_conv_3x3.*sg_block"):
        build_op("conv_7x7", 8, 1, False)


def test_resolve_space_names_and_lists():
    assert resolve_space("darts") == CLASSIC_PRIMITIVES
    assert resolve_space("none,sg_block,skip_connect") == ("none", "sg_block", "skip_connect")
    with pytest.raises(UserError, match="unknown search space or op 'foo'"):
        resolve_space("foo")
    with pytest.raises(UserError, match="unknown op 'bar'"):
        resolve_space("sg_block,bar")
    with pytest.raises(UserError, match="twice"):
        resolve_space("sg_block,sg_block")


@pytest.mark.parametrize("kwargs", [{"sg_ratio": 0}, {"sg_identity": 0}, {"sg_identity": 1.5}, {"ir_expansion": 0}])
def test_bad_op_options(kwargs):
    with pytest.raises(UserError):
        OpOptions(**kwargs)


@pytest.mark.parametrize("kernel, stride, size", [(3, 1, 8), (5, 1, 8), (3, 2, 8), (5, 2, 7), (3, 1, 7)])
def test_polyphase_dilated_conv_equals_native_conv(kernel, stride, size):
    from darts_sg.speed.polyphase import PolyphaseDilatedConv2d, is_dilated_depthwise

    plain = torch.nn.Conv2d(4, 4, kernel, stride, kernel - 1, dilation=2, groups=4, bias=False)
    assert is_dilated_depthwise(plain)
    fast = PolyphaseDilatedConv2d(4, 4, kernel, stride, kernel - 1, dilation=2, groups=4, bias=False)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 4, size, size, requires_grad=True)
    native = plain(x)
    y = fast(x)
    torch.testing.assert_close(y, native)
    g = torch.randn_like(y)
    gx_fast, gw_fast = torch.autograd.grad(y, (x, fast.weight), g)
    gx, gw = torch.autograd.grad(native, (x, plain.weight), g)
    torch.testing.assert_close(gx_fast, gx)
    torch.testing.assert_close(gw_fast, gw)


def test_ops_are_plain_modules():
    """The model code builds torch's own modules; faster substitutes come from darts_sg.speed.accelerate."""
    op = build_op("dil_conv_5x5", 8, 2, affine=True)
    assert {type(m) for m in op.modules()} <= {type(op), torch.nn.ReLU, torch.nn.Conv2d, torch.nn.BatchNorm2d}
    reduce = build_op("skip_connect", 8, 2, affine=True)
    assert [c.stride for c in (reduce.conv_1, reduce.conv_2)] == [(2, 2), (2, 2)]


@pytest.mark.parametrize("name", ["sg_block", "inv_res"])
def test_in_place_relu6_gives_the_out_of_place_values_and_gradients_bit_for_bit(name):
    """ReLU6 runs in place, the blocks' usual form; values and gradients are those of the out-of-place block.
    (torch's in-place hardtanh keeps a copy of its input for the backward, so in place alone saves no
    memory; `darts_sg.speed.relu6.LeanReLU6` does, tests/test_relu6.py.)"""
    import copy

    torch.manual_seed(0)
    block = build_op(name, 16, 1, affine=True, options=OpOptions())
    plain = copy.deepcopy(block)
    for module in plain.modules():
        if isinstance(module, torch.nn.ReLU6):
            module.inplace = False
    assert any(m.inplace for m in block.modules() if isinstance(m, torch.nn.ReLU6))
    x = (3 * torch.randn(4, 16, 8, 8)).requires_grad_(True)
    grads = []
    for net in (block, plain):
        out = net(x)
        grads.append(torch.autograd.grad(out, [x, *net.parameters()], torch.randn_like(out, generator=torch.Generator().manual_seed(1))))
        grads[-1] = (out, *grads[-1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
