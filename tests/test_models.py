"""Models: every name x norm builds, runs forward and backward, and has the layers its
norm promises; small_cnn really learns the digits."""
import pytest
import torch
from torch import nn

from models import MODEL_NAMES, build_model

try:
    import toolkit.invariance as invariance
    invariance.InvConv2d, invariance.InvLinear  # noqa: B018
    INV_SKIP = None
except (ImportError, AttributeError) as exc:  # the compiled layer is not built here
    invariance = None
    INV_SKIP = f"toolkit.invariance does not import: {exc}"

needs_inv = pytest.mark.skipif(INV_SKIP is not None, reason=INV_SKIP or "")


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one intra-op thread (tests/conftest.py says why)."""

# Small inputs keep the whole matrix fast; ImageNet models accept any size >= 32.
SHAPES = {"small_cnn": (1, 8)}
DEFAULT_SHAPE = (3, 32)


def _build(name, norm, num_classes=7):
    channels, size = SHAPES.get(name, DEFAULT_SHAPE)
    model = build_model(name, num_classes=num_classes, in_channels=channels,
                        image_size=size, norm=norm)
    return model, torch.randn(4, channels, size, size, generator=torch.Generator().manual_seed(0))


def _forward_backward(model, x):
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Every parameter is used: no dead layer.
    assert all(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)


@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_plain(name, norm):
    torch.manual_seed(0)
    model, x = _build(name, norm)
    _forward_backward(model, x)


@needs_inv
@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "resnet18_cifar", "vgg11",
                                  "vit_tiny", "resnet50"])
def test_forward_backward_inv(name):
    torch.manual_seed(0)
    model, x = _build(name, "inv")
    _forward_backward(model, x)


def _plain_convs(model):
    return [m for m in model.modules() if type(m) is nn.Conv2d]


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "vgg16", "small_cnn"])
def test_bn_models_use_biasless_convs_and_batchnorm(name):
    model, _ = _build(name, "bn")
    convs = _plain_convs(model)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert convs and len(norms) == len(convs)
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "vgg16", "small_cnn", "vit_tiny"])
def test_none_models_have_no_normalisation(name):
    model, _ = _build(name, "none")
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules())
    assert all(c.bias is not None for c in _plain_convs(model))


def test_resnet_depths_and_projection_shortcuts():
    def count_convs(name):
        return len(_plain_convs(_build(name, "none")[0]))
    # 6n+2 layers: n = 3 and 9 blocks per stage, plus the two 1x1 projection shortcuts.
    assert count_convs("resnet20") == 19 + 2
    assert count_convs("resnet56") == 55 + 2
    assert count_convs("resnet18") == 17 + 3
    assert count_convs("resnet50") == 49 + 4


def test_deep_unnormalised_resnet_starts_well_scaled():
    torch.manual_seed(0)
    model, x = _build("resnet56", "none")
    with torch.no_grad():
        out = model(x)
    assert 1e-3 < out.std().item() < 10.0


def test_vit_norm_choices():
    bn_model, _ = _build("vit_tiny", "bn")
    assert sum(isinstance(m, nn.LayerNorm) for m in bn_model.modules()) == 2 * 6 + 1
    with pytest.raises(ValueError, match="image_size 33"):
        build_model("vit_tiny", num_classes=10, image_size=33)


def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18_cifar"):
        build_model("resnet19", num_classes=10)
    with pytest.raises(ValueError, match="unknown norm 'gn'.*bn, inv, none"):
        build_model("resnet20", num_classes=10, norm="gn")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet20", num_classes=0)


def test_vgg_on_tiny_images_skips_pooling():
    model = build_model("vgg11", num_classes=10, in_channels=1, image_size=8, norm="bn")
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@needs_inv
@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "resnet18", "vgg11", "vit_tiny"])
def test_inv_models_replace_every_conv_and_linear(name):
    model, _ = _build(name, "inv")
    assert not _plain_convs(model)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules())
    inv_convs = [m for m in model.modules() if isinstance(m, invariance.InvConv2d)]
    assert inv_convs and all(c.bias is not None for c in inv_convs)
    # The network's first conv (the first registered) whitens raw pixels: 15 iterations.
    assert [c.n_iter for c in inv_convs] == [15] + [5] * (len(inv_convs) - 1)
    assert any(isinstance(m, invariance.InvLinear) for m in model.modules())


def _train_small_cnn_on_digits(norm, epochs, lr):
    from toolkit.data import load_dataset
    bundle = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=bundle.num_classes,
                        in_channels=bundle.in_channels, image_size=bundle.image_size, norm=norm)
    x_train, y_train = bundle.train.tensors
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order_gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train), generator=order_gen).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    model.eval()
    x_test, y_test = bundle.test.tensors
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def test_small_cnn_learns_digits_bn():
    assert _train_small_cnn_on_digits("bn", epochs=3, lr=0.05) > 0.9


@needs_inv
def test_small_cnn_learns_digits_inv():
    assert _train_small_cnn_on_digits("inv", epochs=3, lr=0.05) > 0.9


@needs_inv
@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "vit_tiny"])
def test_layer_options_reach_every_invariance_layer(name):
    options = dict(block=8, sampling_stride="auto", stats_budget=0.5, n_iter=4, first_n_iter=9,
                   stats_every=10, method="newton", sync=True)
    model = build_model(name, num_classes=7, in_channels=1, image_size=8, norm="inv",
                        layer_options=options)
    convs = [m for m in model.modules() if isinstance(m, invariance.InvConv2d)]
    linears = [m for m in model.modules() if isinstance(m, invariance.InvLinear)]
    assert convs and linears
    assert [c.n_iter for c in convs] == [9] + [4] * (len(convs) - 1)
    assert all(m.n_iter == 4 for m in linears)
    for layer in convs + linears:
        assert (layer.stats_every, layer.method, layer.sync, layer.freeze) == \
            (10, "newton", True, False)
        assert layer.warm_start == 29
    for conv in convs:
        assert conv.stats_budget == 0.5 and conv.block == min(8, conv.in_channels)
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        s = conv.sampling_stride
        assert k2 * conv.block / (s * s * conv.out_channels) <= 0.5
    # linear layers keep their full-width block: the conv block does not apply to them
    assert all(m.block == min(m.in_features, 512) for m in linears)
    x = torch.randn(2, 1, 8, 8)
    model(x).sum().backward()


@needs_inv
def test_layer_options_defaults_are_the_spec_layer():
    default = build_model("resnet20", num_classes=7, norm="inv")
    explicit = build_model("resnet20", num_classes=7, norm="inv", layer_options={
        "block": 64, "sampling_stride": "3", "n_iter": None, "stats_every": 1})
    for a, b in zip(default.modules(), explicit.modules()):
        assert type(a) is type(b) and repr(a) == repr(b)
    frozen = build_model("small_cnn", num_classes=7, in_channels=1, image_size=8, norm="inv",
                         layer_options={"freeze": True})
    assert all(m.freeze for m in frozen.modules() if isinstance(m, invariance.InvConv2d))


@pytest.mark.parametrize("options,match", [
    ({"stats_every": 0}, "stats_every"), ({"block": -1}, "block"),
    ({"sampling_stride": "fast"}, "sampling_stride"), ({"sampling_stride": 0}, "sampling_stride"),
    ({"stats_budget": 0}, "stats_budget"), ({"n_iter": 1.5}, "n_iter"),
    ({"first_n_iter": 0}, "first_n_iter"), ({"method": "exact"}, "method"),
    ({"sync": "yes"}, "sync"), ({"freeze": 1}, "freeze"),
    ({"freeze": True, "stats_every": 10}, "freeze"), ({"blocks": 64}, "unknown layer option"),
])
def test_bad_layer_options_raise_one_line_value_errors(options, match):
    with pytest.raises(ValueError, match=match) as info:
        build_model("small_cnn", num_classes=7, in_channels=1, image_size=8, norm="inv",
                    layer_options=options)
    assert "\n" not in str(info.value)


@needs_inv
def test_layer_options_object_is_used_as_built():
    """The options are checked once, when the LayerOptions is built (from the run
    configuration): the model's LayerFactory takes that object as it is."""
    from models.layers import LayerFactory
    from toolkit.invariance.options import LayerOptions
    options = LayerOptions(stats_every=4, sampling_stride="2")
    assert options.sampling_stride == 2  # normalised once, at construction
    assert LayerFactory("inv", options).layer_options is options
    model = build_model("small_cnn", num_classes=7, in_channels=1, image_size=8, norm="inv",
                        layer_options=options)
    convs = [m for m in model.modules() if isinstance(m, invariance.InvConv2d)]
    assert all(c.stats_every == 4 and c.sampling_stride == 2 for c in convs)
    with pytest.raises(AttributeError):
        options.stats_every = 1  # frozen: what was checked is what the layers get


def test_layer_options_with_another_norm():
    # checked, defaults accepted (a run configuration passes them all), changes refused
    from toolkit.invariance.options import LayerOptions
    model = build_model("small_cnn", num_classes=7, in_channels=1, image_size=8, norm="bn",
                        layer_options=LayerOptions().as_dict())
    assert not any("Inv" in type(m).__name__ for m in model.modules())
    with pytest.raises(ValueError, match="stats_every applies only to norm inv"):
        build_model("small_cnn", num_classes=7, norm="bn", layer_options={"stats_every": 4})
    assert LayerOptions.build({"sampling_stride": "auto", "stats_every": 4}) == \
        LayerOptions(sampling_stride="auto", stats_every=4)
