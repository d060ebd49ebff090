"""utils.LPIPS wiring, with an untrained AlexNet (the ImageNet one cannot be downloaded here):
input range, identical images, batches, border cropping, and the one-line errors."""
import sys
import urllib.error

import pytest
import torch

import utils

ALEXNET_FILE = 'alexnet-owt-7be5be79.pth'


@pytest.fixture(scope='module')
def metric():
    torch.manual_seed(0)
    return utils.LPIPS(backbone='random')


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(3, 3, 64, 72, generator=g)
    return hr, (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, where the AlexNet file would be downloaded to."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    return tmp_path / 'hub' / 'checkpoints'


def test_identical_images_give_zero(metric, pair):
    hr, _ = pair
    assert metric(hr[0], hr[0]) == 0
    assert torch.equal(metric(hr, hr), torch.zeros(3))


def test_images_are_scored_in_the_minus_one_to_one_range_on_the_8_bit_grid(metric, pair):
    hr, sr = pair
    q_hr, q_sr = utils.quantize(hr), utils.quantize(sr)
    expected = metric.net(2 * q_sr - 1, 2 * q_hr - 1).flatten()
    got = metric(sr, hr)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the lpips package's own [0, 1] conversion agrees; [0, 1] given as is would not
    torch.testing.assert_close(got, metric.net(q_sr, q_hr, normalize=True).flatten(),
                               rtol=0, atol=1e-6)
    assert (metric.net(q_sr, q_hr).flatten() - got).abs().min() > 1e-4
    assert (got > 0).all()


def test_batch_equals_one_image_at_a_time(metric, pair):
    hr, sr = pair
    batch = metric(sr, hr)
    assert batch.shape == (3,)
    singles = [metric(sr[i], hr[i]) for i in range(3)]
    assert all(isinstance(s, float) for s in singles)
    torch.testing.assert_close(batch, torch.tensor(singles), rtol=0, atol=1e-6)


def test_crop_border_crops(metric, pair):
    hr, sr = pair
    assert metric(sr[0], hr[0], crop_border=4) == pytest.approx(
        metric(sr[0, :, 4:-4, 4:-4], hr[0, :, 4:-4, 4:-4]), abs=1e-6)
    assert metric(sr[0], hr[0], crop_border=4) != pytest.approx(metric(sr[0], hr[0]), abs=1e-6)


def test_shapes_must_match(metric, pair):
    hr, sr = pair
    with pytest.raises(ValueError, match='image shapes differ'):
        metric(sr[0], hr[0, :, :32])


def test_imagenet_backbone_is_read_from_the_hub_cache(hub):
    """The AlexNet file in torch's hub cache fills the backbone, layer by layer (a random
    stand-in here: the real file cannot be downloaded on the test machine)."""
    from torchvision.models import alexnet
    torch.manual_seed(2)
    state = alexnet(weights=None).state_dict()
    hub.mkdir(parents=True)
    torch.save(state, hub / ALEXNET_FILE)
    metric = utils.LPIPS(backbone='imagenet')
    convs = [m for m in metric.net.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv, index in zip(convs, (0, 3, 6, 8, 10)):
        assert torch.equal(conv.weight, state[f'features.{index}.weight'])
        assert torch.equal(conv.bias, state[f'features.{index}.bias'])


def test_offline_error_is_one_line_naming_the_file(hub, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(utils.LPIPSError) as err:
        utils.LPIPS()
    message = str(err.value)
    assert '\n' not in message
    assert message.endswith(f'place it at {hub / ALEXNET_FILE}')
    assert f'download https://download.pytorch.org/models/{ALEXNET_FILE}' in message


def test_unreadable_cached_file_is_one_line_error(hub):
    hub.mkdir(parents=True)
    (hub / ALEXNET_FILE).write_bytes(b'truncated download')
    with pytest.raises(utils.LPIPSError) as err:
        utils.LPIPS()
    assert '\n' not in str(err.value) and str(hub / ALEXNET_FILE) in str(err.value)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'lpips', None)
    with pytest.raises(utils.LPIPSError, match="^LPIPS needs the lpips package: "
                                               "python -m pip install 'lpips==0.1.4' "):
        utils.LPIPS(backbone='random')
