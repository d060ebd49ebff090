"""model.py: generator, discriminator, BatchNorm fusion and the VGG19 feature extractor."""
import time
import urllib.error

import pytest
import torch
from torch import nn

import model


def shared_parameters(module: nn.Module) -> list:
    """Pairs of parameter names whose tensors share memory.

    remove_duplicate=False matters: by default named_parameters() lists a shared parameter once,
    which would hide exactly the sharing this looks for."""
    seen, shared = {}, []
    for name, p in module.named_parameters(remove_duplicate=False):
        ptr = p.data_ptr()
        if ptr in seen:
            shared.append((seen[ptr], name))
        else:
            seen[ptr] = name
    return shared


def test_shared_parameter_check_detects_repeated_block():
    bad = nn.Sequential(*[model.ResidualBlock(8)] * 4)
    assert shared_parameters(bad), 'the check misses [Block()] * n'
    good = nn.Sequential(*[model.ResidualBlock(8) for _ in range(4)])
    assert shared_parameters(good) == []


def test_generator_blocks_share_no_parameters():
    g = model.Generator(4, num_blocks=4, channels=8)
    assert shared_parameters(g) == []
    # and the residual blocks really are separate modules, not one listed four times
    assert len({id(block) for block in g.body}) == 4


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_generator_output_shape(scale):
    g = model.Generator(scale, num_blocks=1, channels=8).eval()
    with torch.no_grad():
        y = g(torch.rand(2, 3, 6, 5))
    assert y.shape == (2, 3, 6 * scale, 5 * scale)


def test_generator_rejects_other_scales():
    with pytest.raises(ValueError, match='upscale_factor'):
        model.Generator(3)


def test_parameter_count_grows_by_one_block_per_block():
    def count(n):
        return sum(p.numel() for p in model.Generator(4, num_blocks=n, channels=8).parameters())

    block = sum(p.numel() for p in model.ResidualBlock(8).parameters())
    assert block > 0
    assert [count(n + 1) - count(n) for n in (1, 2, 3)] == [block] * 3


@pytest.mark.parametrize('size', [32, 96, 128])
def test_discriminator_returns_one_logit_per_image(size):
    d = model.Discriminator(channels=8)
    y = d(torch.rand(2, 3, size, size))
    assert y.shape == (2, 1)


def test_fuse_batchnorm_matches_eval_generator():
    torch.manual_seed(0)
    g = model.Generator(4, num_blocks=2, channels=8)
    # non-trivial running statistics and affine parameters, as after training
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    g.eval()
    fused = model.fuse_batchnorm(g)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules()), 'the original was modified'
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        expected, got = g(x), fused(x)
    assert expected.abs().max() > 0.01
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope='module')
def random_vgg():
    with pytest.warns(UserWarning, match='RANDOM'):
        return model.FeatureExtractor('random')


def test_random_feature_extractor_is_frozen_in_eval_mode(random_vgg):
    assert not any(p.requires_grad for p in random_vgg.parameters())
    random_vgg.train()
    assert not random_vgg.training
    assert not any(m.training for m in random_vgg.modules())


def test_feature_extractor_output_shape(random_vgg):
    with torch.no_grad():
        y = random_vgg(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, 512, 4, 4)


def test_feature_extractor_loads_local_state_dict(tmp_path):
    from torchvision.models import vgg19
    vgg = vgg19(weights=None)
    # the features part of a torchvision state_dict (keys 'features.N....'); the 400 MB
    # classifier is not used by the extractor and would only slow the test down
    state = {k: v for k, v in vgg.state_dict().items() if k.startswith('features.')}
    path = tmp_path / 'vgg19.pth'
    torch.save(state, path)
    fe = model.FeatureExtractor(str(path))
    torch.testing.assert_close(fe.features[34].weight, vgg.features[34].weight, rtol=0, atol=0)
    torch.testing.assert_close(fe.features[0].bias, vgg.features[0].bias, rtol=0, atol=0)


# The error cases build the network on the meta device: the error must come from the weights
# alone, and initialising VGG19 for real costs seconds each time.

def test_feature_extractor_missing_file(tmp_path):
    path = str(tmp_path / 'nope.pth')
    with pytest.raises(model.VGGWeightsError, match='not found') as err, torch.device('meta'):
        model.FeatureExtractor(path)
    assert path in str(err.value)


@pytest.mark.parametrize('content', ['text', 'other_state_dict'])
def test_feature_extractor_wrong_file(tmp_path, content):
    path = tmp_path / 'vgg19.pth'
    if content == 'text':
        path.write_text('not a checkpoint')
    else:
        torch.save({'conv.weight': torch.zeros(3, 3)}, path)
    with pytest.raises(model.VGGWeightsError) as err, torch.device('meta'):
        model.FeatureExtractor(str(path))
    assert str(path) in str(err.value)


def test_imagenet_weights_without_network_fail_fast(tmp_path, monkeypatch):
    # No cached weights (empty hub dir), and the download that torchvision's
    # WeightsEnum.get_state_dict -> torch.hub.load_state_dict_from_url starts fails as it would
    # offline; the network is never touched.
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    start = time.monotonic()
    with pytest.raises(model.VGGWeightsError, match='--vgg_weights') as err, \
            torch.device('meta'):
        model.FeatureExtractor()
    assert time.monotonic() - start < 15
    assert calls and calls[0].endswith('.pth')
    assert str(tmp_path) in str(err.value)  # says where a manually downloaded file would go
